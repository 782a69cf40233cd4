// storage_crash_writer DIR FIRST: registers, persists and deletes contexts in the store at DIR as
// fast as it can, forever, reporting each step on stdout (one line, written with write(2) so that a
// SIGKILL cannot lose a reported step):
//   C i   context "c<i>" registered (CreateRecord returned OK)
//   R i   context "c<i>" READY (CommitReady returned OK)
//   d j   about to delete "c<j>"        D j   "c<j>" deleted (Delete returned OK)
// crash_test.cc kills it with SIGKILL at random moments and checks what a restart finds.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/test_util.h"
#include "tests/storage/crash_util.h"

namespace {

void Say(char what, int i) {
  char line[32];
  const int n = std::snprintf(line, sizeof(line), "%c %d\n", what, i);
  SQZ_CHECK(::write(STDOUT_FILENO, line, n) == n);
}

}  // namespace

int main(int argc, char** argv) {
  SQZ_CHECK(argc == 3) << "usage: storage_crash_writer DIR FIRST";
  const int first = std::atoi(argv[2]);
  auto store = sqz::testing::OpenOrDie(argv[1]);
  SQZ_CHECK(store->Recover().ok());
  for (int i = first; i < first + sqz::crash::kContexts; ++i) {
    const std::string id = sqz::crash::Id(i);
    const std::vector<int32_t> tokens = sqz::crash::Tokens(i);
    sqz::ContextRecord r = sqz::testing::Record(id, tokens);
    SQZ_CHECK(store->CreateRecord(r, tokens).ok());
    Say('C', i);
    SQZ_CHECK(store->UpdateState(id, sqz::ContextState::kPersisting, 0, "", false).ok());
    SQZ_CHECK(store->PutSnapshot(sqz::crash::Snapshot(i), &r).ok());
    SQZ_CHECK(store->CommitReady(r).ok());
    Say('R', i);
    if (i % 3 == 2 && i > first) {
      Say('d', i - 1);
      SQZ_CHECK(store->Delete(sqz::crash::Id(i - 1)).ok());
      Say('D', i - 1);
    }
  }
  ::pause();  // all done: wait for the kill
  return 0;
}
