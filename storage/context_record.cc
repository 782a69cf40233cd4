#include "storage/context_record.h"

#include <nlohmann/json.hpp>

namespace sqz {
namespace {

using nlohmann::json;

json OptionsToJson(const SqueezeOptions& o) {
  return json{{"sink_tokens", o.sink_tokens},
              {"observation_window", o.observation_window},
              {"centroid_fraction", o.centroid_fraction},
              {"coarse_fraction", o.coarse_fraction},
              {"kmeans_iterations", o.kmeans_iterations},
              {"kmeans_tolerance", o.kmeans_tolerance},
              {"kmeans_seed", o.kmeans_seed},
              {"prefill_chunk_tokens", o.prefill_chunk_tokens}};
}

SqueezeOptions OptionsFromJson(const json& j) {
  SqueezeOptions o;
  o.sink_tokens = j.at("sink_tokens").get<int64_t>();
  o.observation_window = j.at("observation_window").get<int64_t>();
  o.centroid_fraction = j.at("centroid_fraction").get<double>();
  o.coarse_fraction = j.at("coarse_fraction").get<double>();
  o.kmeans_iterations = j.at("kmeans_iterations").get<int32_t>();
  o.kmeans_tolerance = j.at("kmeans_tolerance").get<double>();
  o.kmeans_seed = j.at("kmeans_seed").get<uint64_t>();
  o.prefill_chunk_tokens = j.at("prefill_chunk_tokens").get<int64_t>();
  return o;
}

}  // namespace

std::string_view ContextStateName(ContextState s) {
  switch (s) {
    case ContextState::kQueued:
      return "QUEUED";
    case ContextState::kPrefilling:
      return "PREFILLING";
    case ContextState::kClustering:
      return "CLUSTERING";
    case ContextState::kCalibrating:
      return "CALIBRATING";
    case ContextState::kPersisting:
      return "PERSISTING";
    case ContextState::kReady:
      return "READY";
    case ContextState::kFailed:
      return "FAILED";
    case ContextState::kDeleting:
      return "DELETING";
  }
  return "UNKNOWN";
}

Status ValidateContextId(std::string_view id) {
  if (id.empty()) return InvalidArgumentError("context id is empty");
  if (id.size() > 256) {
    return InvalidArgumentError("context id is " + std::to_string(id.size()) +
                                " bytes long; at most 256 are allowed");
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    if (c < 0x20 || c == 0x7f) {
      return InvalidArgumentError("context id has a control character (byte " + std::to_string(c) +
                                  ") at offset " + std::to_string(i));
    }
  }
  return OkStatus();
}

Status ValidateModel(const ContextRecord& r) {
  if (!r.model.config_summary.empty() && r.model.Hash() != r.model_fingerprint) {
    return InvalidArgumentError(
        "context " + r.id + ": model_fingerprint " + std::to_string(r.model_fingerprint) +
        " is not the Hash() of its model identity (" + r.model.HashHex() + ")");
  }
  return OkStatus();
}

std::string EncodeRecord(const ContextRecord& r) {
  json manifest = json::array();
  for (const auto& b : r.manifest) {
    manifest.push_back({{"key", b.key}, {"checksum", b.checksum}, {"bytes", b.bytes}});
  }
  json j = {{"format_version", kRecordFormatVersion},
            {"id", r.id},
            {"state", static_cast<int32_t>(r.state)},
            {"progress", r.progress},
            {"model_fingerprint", r.model_fingerprint},
            {"model",
             {{"config_summary", r.model.config_summary},
              {"tensors_digest", r.model.tensors_digest},
              {"weights_digest", r.model.weights_digest},
              {"format_version", r.model.format_version}}},
            {"token_count", r.token_count},
            {"content_digest", r.content_digest},
            {"options", OptionsToJson(r.options)},
            {"owner", r.owner},
            {"labels", r.labels},
            {"pinned", r.pinned},
            {"create_time_ms", r.create_time_ms},
            {"update_time_ms", r.update_time_ms},
            {"error", r.error},
            {"stored_bytes", r.stored_bytes},
            {"resident_bytes", r.resident_bytes},
            {"thresholds", r.thresholds},
            {"manifest", manifest}};
  // Invalid UTF-8 in a label or message must not make dump() throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

StatusOr<ContextRecord> DecodeRecord(const std::string& id, std::string_view text) {
  try {
    const json j = json::parse(text);
    const int32_t version = j.at("format_version").get<int32_t>();
    if (version > kRecordFormatVersion) {
      return FailedPreconditionError("record of context " + id + " has format version " +
                                     std::to_string(version) + ", newer than this build's " +
                                     std::to_string(kRecordFormatVersion) + "; upgrade squeezed");
    }
    ContextRecord r;
    r.id = j.at("id").get<std::string>();
    if (r.id != id) {
      return DataLossError("record stored under context id " + id + " names context " + r.id);
    }
    const int32_t state = j.at("state").get<int32_t>();
    if (state < static_cast<int32_t>(ContextState::kQueued) ||
        state > static_cast<int32_t>(ContextState::kDeleting)) {
      return DataLossError("record of context " + id + " has unknown state " +
                           std::to_string(state));
    }
    r.state = static_cast<ContextState>(state);
    r.progress = j.at("progress").get<double>();
    r.model_fingerprint = j.at("model_fingerprint").get<uint64_t>();
    if (j.contains("model")) {
      const json& m = j.at("model");
      r.model.config_summary = m.at("config_summary").get<std::string>();
      r.model.tensors_digest = m.at("tensors_digest").get<uint64_t>();
      r.model.weights_digest = m.at("weights_digest").get<uint64_t>();
      r.model.format_version = m.at("format_version").get<int32_t>();
    }
    r.token_count = j.at("token_count").get<int64_t>();
    r.content_digest = j.at("content_digest").get<std::string>();
    r.options = OptionsFromJson(j.at("options"));
    r.owner = j.at("owner").get<std::string>();
    r.labels = j.at("labels").get<std::map<std::string, std::string>>();
    r.pinned = j.at("pinned").get<bool>();
    r.create_time_ms = j.at("create_time_ms").get<int64_t>();
    r.update_time_ms = j.at("update_time_ms").get<int64_t>();
    r.error = j.at("error").get<std::string>();
    r.stored_bytes = j.at("stored_bytes").get<int64_t>();
    if (j.contains("resident_bytes")) r.resident_bytes = j.at("resident_bytes").get<int64_t>();
    if (j.contains("thresholds")) r.thresholds = j.at("thresholds").get<std::vector<float>>();
    for (const auto& b : j.at("manifest")) {
      r.manifest.push_back({b.at("key").get<std::string>(), b.at("checksum").get<uint64_t>(),
                            b.at("bytes").get<uint64_t>()});
    }
    return r;
  } catch (const json::exception& e) {
    return DataLossError("record of context " + id + " is corrupt: " + e.what());
  }
}

}  // namespace sqz
