// Process crashes: storage_crash_writer (a separate process) registers, persists and deletes
// contexts until it is killed with SIGKILL at a random moment; the store is then reopened and
// recovered, and what it holds must agree with what the writer had reported:
//   * a context reported READY (and not being deleted) is READY and loads exactly;
//   * a context reported deleted is gone; one whose deletion had started is gone or intact;
//   * a context reported registered exists (unless deleted): READY and intact, or unfinished and
//     listed for re-ingestion with its tokens;
//   * nothing READY in the store fails to load, and no DELETING record survives Recover().
// A SIGKILL loses the process's memory (RocksDB's memtables included, so blobs that bypass the
// WAL) but not the page cache: this checks the protocol against process crashes, not power loss.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/storage/crash_util.h"

extern char** environ;

namespace sqz {
namespace {

// Runs the writer on `dir` from context `first` on for `ms` milliseconds, kills it, and returns
// what it reported.
std::string RunAndKill(const std::string& dir, int first, int ms) {
  int out[2];
  REQUIRE(::pipe(out) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  const std::string exe = std::string(SQZ_BINARY_DIR) + "/tests/storage/storage_crash_writer";
  const std::string first_arg = std::to_string(first);
  char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(dir.c_str()),
                  const_cast<char*>(first_arg.c_str()), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));  // killed by us, not failed
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;) text.append(buf, n);
  ::close(out[0]);
  return text;
}

TEST_CASE("a store killed at random moments recovers to what it had acknowledged") {
  std::mt19937 rng(7);
  int checked_ready = 0, checked_unfinished = 0, checked_deleted = 0;
  for (int round = 0; round < 8; ++round) {
    testing::TempDir dir;
    const int ms = 300 + static_cast<int>(rng() % 2500);
    // Two kills in a row on the same store: the second run starts from a recovered store.
    std::map<int, std::set<char>> seen;
    for (int run = 0; run < 2; ++run) {
      // The second run continues after every context the first could have touched (it may have
      // registered one more than it reported).
      const int first = seen.empty() ? 0 : seen.rbegin()->first + 2;
      std::istringstream lines(RunAndKill(dir.path.string(), first, run == 0 ? ms : ms / 2 + 200));
      char what;
      int i;
      while (lines >> what >> i) seen[i].insert(what);
    }
    INFO("round " << round << ", killed after " << ms << " ms");
    auto store = testing::OpenOrDie(dir.path);
    auto rec = store->Recover();
    REQUIRE(rec.ok());
    const std::set<std::string> unfinished(rec->unfinished.begin(), rec->unfinished.end());
    for (const auto& [i, steps] : seen) {
      INFO("context " << crash::Id(i) << " reported " << std::string(steps.begin(), steps.end()));
      auto r = store->GetRecord(crash::Id(i));
      if (steps.count('D')) {
        CHECK(r.status().code() == StatusCode::kNotFound);
        ++checked_deleted;
        continue;
      }
      if (steps.count('d') && !r.ok()) {
        CHECK(r.status().code() == StatusCode::kNotFound);  // deletion finished by Recover
        continue;
      }
      if (!steps.count('C')) continue;  // only a deletion intent of an older context
      REQUIRE(r.ok());
      CHECK(r->state != ContextState::kDeleting);
      if (steps.count('R')) CHECK(r->state == ContextState::kReady);
      if (r->state == ContextState::kReady) {
        auto snap = store->LoadSnapshot(*r);
        REQUIRE(snap.ok());
        CHECK(*snap == crash::Snapshot(i));
        ++checked_ready;
      } else {
        CHECK(unfinished.count(crash::Id(i)) == 1);
        CHECK(*store->LoadTokens(crash::Id(i)) == crash::Tokens(i));
        ++checked_unfinished;
      }
    }
    // Whatever else the store holds is consistent too.
    auto all = store->List(100000, "");
    REQUIRE(all.ok());
    for (const auto& r : all->records) {
      CHECK(r.state != ContextState::kDeleting);
      if (r.state == ContextState::kReady) CHECK(store->LoadSnapshot(r).ok());
    }
  }
  CHECK(checked_ready > 0);
  CHECK(checked_deleted > 0);
  WARN(checked_ready << " READY contexts verified, " << checked_deleted << " deleted ones gone, "
                     << checked_unfinished
                     << " unfinished ones resumable, over 8 rounds of 2 kills");
}

}  // namespace
}  // namespace sqz
