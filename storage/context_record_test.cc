#include "storage/context_record.h"

#include <catch2/catch.hpp>
#include <limits>
#include <nlohmann/json.hpp>

namespace sqz {
namespace {

ContextRecord Full() {
  ContextRecord r;
  r.id = "contract-7";
  r.state = ContextState::kCalibrating;
  r.progress = 0.375;
  r.model = {"llama L=32 hidden=4096", 0xffffffffffffffffULL, 0x8000000000000001ULL};
  r.model_fingerprint = r.model.Hash();
  r.token_count = 129;
  r.content_digest = "00ff";
  r.options.sink_tokens = 3;
  r.options.observation_window = 127;
  r.options.centroid_fraction = 0.1;
  r.options.coarse_fraction = 0.0;
  r.options.kmeans_iterations = 1;
  r.options.kmeans_tolerance = 1e-7;
  r.options.kmeans_seed = std::numeric_limits<uint64_t>::max();
  r.options.prefill_chunk_tokens = 1;
  r.owner = "key-1";
  r.labels = {{"team", "docs"}, {"lang", "日本語"}, {"", "empty key"}};
  r.pinned = true;
  r.create_time_ms = 1764400000000;
  r.update_time_ms = 1764400000001;
  r.error = "line 1\nline \"2\"";
  r.stored_bytes = std::numeric_limits<int64_t>::max();
  r.resident_bytes = (int64_t{1} << 40) + 3;
  r.thresholds = {0.0f, 1e-30f, 0.125f, 3.4e38f};
  r.manifest = {{"meta", 1, 2}, {"0/0/kv", 0xfedcba9876543210ULL, 1ULL << 40}};
  return r;
}

TEST_CASE("records round-trip exactly through their JSON encoding") {
  const ContextRecord r = Full();
  const std::string text = EncodeRecord(r);
  auto back = DecodeRecord(r.id, text);
  REQUIRE(back.ok());
  CHECK(*back == r);
  CHECK(ValidateModel(r).ok());
  // Self-describing: a plain JSON object with named fields and the format version.
  const auto j = nlohmann::json::parse(text);
  CHECK(j.at("format_version") == kRecordFormatVersion);
  CHECK(j.at("state") == 4);
  CHECK(j.at("manifest").at(1).at("key") == "0/0/kv");
  // A default record too.
  ContextRecord empty;
  empty.id = "e";
  CHECK(*DecodeRecord("e", EncodeRecord(empty)) == empty);
}

TEST_CASE("fields added after the first records are optional on read") {
  auto j = nlohmann::json::parse(EncodeRecord(Full()));
  j.erase("model");
  j.erase("thresholds");
  j.erase("resident_bytes");
  auto back = DecodeRecord("contract-7", j.dump());
  REQUIRE(back.ok());
  CHECK(back->model == ModelIdentity{});
  CHECK(back->thresholds.empty());
  CHECK(back->resident_bytes == 0);  // unknown: readers fall back to stored_bytes
  CHECK(back->model_fingerprint == Full().model_fingerprint);
}

TEST_CASE("invalid UTF-8 in a text field is replaced, not thrown") {
  ContextRecord r = Full();
  r.error = std::string("bad \xff\xfe byte");
  auto back = DecodeRecord(r.id, EncodeRecord(r));
  REQUIRE(back.ok());
  CHECK(back->error.rfind("bad ", 0) == 0);
  CHECK(back->error != r.error);
}

TEST_CASE("malformed, foreign and future records are refused with the context named") {
  const std::string good = EncodeRecord(Full());
  auto code = [](const std::string& id, const std::string& text) {
    return DecodeRecord(id, text).status().code();
  };
  CHECK(code("contract-7", "") == StatusCode::kDataLoss);
  CHECK(code("contract-7", good.substr(0, good.size() / 2)) == StatusCode::kDataLoss);
  CHECK(code("contract-7", "[1, 2]") == StatusCode::kDataLoss);
  CHECK(code("other", good) == StatusCode::kDataLoss);
  CHECK(DecodeRecord("other", good).status().message() ==
        "record stored under context id other names context contract-7");
  for (const char* field : {"id", "state", "progress", "options", "manifest", "labels"}) {
    INFO("without " << field);
    auto j = nlohmann::json::parse(good);
    j.erase(field);
    const Status s = DecodeRecord("contract-7", j.dump()).status();
    CHECK(s.code() == StatusCode::kDataLoss);
    CHECK(s.message().rfind("record of context contract-7 is corrupt", 0) == 0);
  }
  for (int state : {0, 9, -1}) {
    auto j = nlohmann::json::parse(good);
    j["state"] = state;
    const Status s = DecodeRecord("contract-7", j.dump()).status();
    CHECK(s.code() == StatusCode::kDataLoss);
    CHECK(s.message().find("unknown state " + std::to_string(state)) != std::string::npos);
  }
  auto j = nlohmann::json::parse(good);
  j["state"] = "READY";  // wrong type
  CHECK(code("contract-7", j.dump()) == StatusCode::kDataLoss);
  j = nlohmann::json::parse(good);
  j["format_version"] = kRecordFormatVersion + 1;
  CHECK(code("contract-7", j.dump()) == StatusCode::kFailedPrecondition);
}

TEST_CASE("a model identity must hash to the record's fingerprint") {
  ContextRecord r = Full();
  r.model_fingerprint ^= 1;
  const Status s = ValidateModel(r);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find(r.model.HashHex()) != std::string::npos);
  r.model = {};  // no identity: any fingerprint (e.g. the engine's) is fine
  CHECK(ValidateModel(r).ok());
}

TEST_CASE("state names and the ingesting range") {
  CHECK(ContextStateName(ContextState::kQueued) == "QUEUED");
  CHECK(ContextStateName(ContextState::kDeleting) == "DELETING");
  CHECK(ContextStateName(static_cast<ContextState>(99)) == "UNKNOWN");
  CHECK(IsIngesting(ContextState::kQueued));
  CHECK(IsIngesting(ContextState::kPersisting));
  CHECK_FALSE(IsIngesting(ContextState::kReady));
  CHECK_FALSE(IsIngesting(ContextState::kFailed));
  CHECK_FALSE(IsIngesting(ContextState::kDeleting));
}

}  // namespace
}  // namespace sqz
