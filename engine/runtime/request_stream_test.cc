#include "engine/runtime/request_stream.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

namespace sqz {
namespace {

GenerateEvent Chunk(const std::string& text, int32_t id) {
  GenerateEvent e;
  e.text = text;
  e.token_ids = {id};
  return e;
}

TEST_CASE("chunks merge on pop and the final event stays separate") {
  RequestStream s;
  s.Push(Chunk("Hel", 1));
  s.Push(Chunk("lo", 2));
  GenerateEvent fin;
  fin.final = true;
  fin.finish_reason = FinishReason::kStop;
  s.Push(fin);
  GenerateEvent e;
  REQUIRE(s.Pop(&e));
  CHECK(e.text == "Hello");
  CHECK(e.token_ids == std::vector<int32_t>{1, 2});
  REQUIRE(s.Pop(&e));
  CHECK(e.final);
  CHECK(e.finish_reason == FinishReason::kStop);
  CHECK_FALSE(s.Pop(&e));
}

TEST_CASE("the waker runs for every event, also for events before it was set") {
  RequestStream s;
  std::atomic<int> wakes{0};
  s.Push(Chunk("a", 1));
  s.SetWaker([&] { ++wakes; });
  CHECK(wakes == 1);
  s.Push(Chunk("b", 2));
  CHECK(wakes == 2);
  s.ClearWaker();
  s.Push(Chunk("c", 3));
  CHECK(wakes == 2);
}

TEST_CASE("producer and consumer on two threads see every token in order") {
  RequestStream s;
  std::thread producer([&] {
    for (int i = 0; i < 1000; ++i) s.Push(Chunk("x", i));
    GenerateEvent fin;
    fin.final = true;
    s.Push(fin);
  });
  std::vector<int32_t> got;
  GenerateEvent e;
  bool done = false;
  while (!done) {
    REQUIRE(s.WaitPop(&e, 10000));
    got.insert(got.end(), e.token_ids.begin(), e.token_ids.end());
    done = e.final;
  }
  producer.join();
  REQUIRE(got.size() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(got[i] == i);
}

TEST_CASE("cancel is visible to the producer with its reason") {
  RequestStream s;
  CHECK_FALSE(s.cancelled());
  s.Cancel(DeadlineExceededError("deadline passed"));
  s.Cancel(CancelledError("second call ignored"));
  CHECK(s.cancelled());
  CHECK(s.cancel_status().code() == StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace sqz
