// sqz-durability-dump: prints one JSON object per context stored in a squeezed data directory,
// with a digest of each READY context's snapshot (tests/durability/snapshot_digest.h), so that a
// test can compare what a crashed server left on disk with what a clean run built.
//
//   sqz-durability-dump DATA_DIR
//
// Output, one line per listed record (DELETING records are never listed):
//   {"id": "...", "state": "READY", "token_count": 200, "content_digest": "...",
//    "model_fingerprint": "0123456789abcdef", "stored_bytes": 123, "snapshot_digest": "..."}
// A READY context whose snapshot does not load carries "load_error" instead of "snapshot_digest".
// Exit status: 0 when the store opened and was listed (even with load errors), 1 otherwise.
//
// Opens the store read-write (RocksDB replays its log as a restart would): point it at a copy of
// the data directory, never at one a running server holds.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "storage/context_store.h"
#include "tests/durability/snapshot_digest.h"

namespace {

int Fail(const sqz::Status& s) {
  std::fprintf(stderr, "sqz-durability-dump: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: sqz-durability-dump DATA_DIR\n");
    return 2;
  }
  sqz::StoreOptions options;
  options.path = argv[1];
  options.block_cache_mb = 8;
  auto store = sqz::ContextStore::Open(options);
  if (!store.ok()) return Fail(store.status());
  std::string token;
  do {
    auto page = (*store)->List(100, token);
    if (!page.ok()) return Fail(page.status());
    for (const sqz::ContextRecord& r : page->records) {
      char fingerprint[17];
      std::snprintf(fingerprint, sizeof(fingerprint), "%016llx",
                    static_cast<unsigned long long>(r.model_fingerprint));
      nlohmann::json j = {{"id", r.id},
                          {"state", std::string(sqz::ContextStateName(r.state))},
                          {"token_count", r.token_count},
                          {"content_digest", r.content_digest},
                          {"model_fingerprint", fingerprint},
                          {"stored_bytes", r.stored_bytes}};
      if (r.state == sqz::ContextState::kReady) {
        auto snapshot = (*store)->LoadSnapshot(r);
        if (snapshot.ok()) {
          j["snapshot_digest"] = sqz::durability::SnapshotDigestHex(*snapshot);
        } else {
          j["load_error"] = snapshot.status().ToString();
        }
      }
      std::printf("%s\n", j.dump().c_str());
    }
    token = page->next_page_token;
  } while (!token.empty());
  return 0;
}
