#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <random>

namespace sqz {
namespace {

// A simulated request: the scheduler's view plus what the simulation tracks.
struct SimRequest {
  SchedRequest s;
  int64_t max_tokens = 0;
  int64_t generated = 0;
  int64_t first_token_step = -1;
  int64_t done_step = -1;
};

// Applies PlanStep iteration by iteration, as the engine loop does, and checks the invariants that
// hold at every step.
struct Simulation {
  SchedulerLimits limits;
  std::vector<SimRequest> waiting = {}, running = {}, done = {};
  std::vector<IngestJob> ingest = {};
  int64_t step = 0;
  int64_t ingest_progress = 0;
  std::map<int64_t, std::vector<int64_t>> chunks = {};  // prefill chunk lengths per request

  void Step() {
    std::vector<SchedRequest> run_view, wait_view;
    for (const auto& r : running) run_view.push_back(r.s);
    for (const auto& r : waiting) wait_view.push_back(r.s);
    const StepPlan plan = PlanStep(limits, run_view, wait_view, ingest);

    // Budget: queries never exceed it; ingestion adds at most its floor beyond it.
    int64_t query_tokens = plan.total_tokens() - plan.ingest_tokens;
    REQUIRE(query_tokens <= limits.max_batch_tokens);
    REQUIRE(plan.total_tokens() <= limits.max_batch_tokens + limits.ingest_floor_tokens);
    // Decode entries come first.
    bool seen_prefill = false;
    for (const auto& w : plan.work) {
      if (!w.decode) seen_prefill = true;
      REQUIRE(!(w.decode && seen_prefill && w.request_id < 0));
    }

    auto drop = [&](std::vector<SimRequest>& v, int64_t id) {
      v.erase(std::remove_if(v.begin(), v.end(), [&](auto& r) { return r.s.id == id; }), v.end());
    };
    for (int64_t id : plan.finished_cancelled) {
      drop(running, id);
      drop(waiting, id);
    }
    for (int64_t id : plan.admitted) {
      REQUIRE(!waiting.empty());
      REQUIRE(waiting.front().s.id == id);  // FCFS, no overtaking
      running.push_back(waiting.front());
      waiting.erase(waiting.begin());
    }
    int64_t reserved = 0;
    for (const auto& r : running) reserved += r.s.reserved_tokens;
    REQUIRE(reserved <= limits.kv_capacity_tokens);
    REQUIRE(static_cast<int64_t>(running.size()) <= limits.max_running);

    for (const auto& w : plan.work) {
      auto it = std::find_if(running.begin(), running.end(), [&](auto& r) { return r.s.id == w.request_id; });
      REQUIRE(it != running.end());
      if (w.decode) {
        REQUIRE(it->s.prompt_remaining == 0);
        ++it->generated;
      } else {
        REQUIRE(w.tokens <= it->s.prompt_remaining);
        // Chunks that leave prompt behind keep the request's alignment (if a chunk can hold it).
        const int64_t align = it->s.prefill_align;
        if (w.tokens < it->s.prompt_remaining && align > 1 &&
            std::min(limits.prefill_chunk_tokens, limits.max_batch_tokens) >= align) {
          REQUIRE(w.tokens % align == 0);
        }
        chunks[w.request_id].push_back(w.tokens);
        it->s.prompt_remaining -= w.tokens;
        if (it->s.prompt_remaining == 0) ++it->generated;  // the last chunk samples a token
      }
      if (it->first_token_step < 0 && it->generated > 0) it->first_token_step = step;
    }
    for (auto it = running.begin(); it != running.end();) {
      if (it->generated >= it->max_tokens) {
        it->done_step = step;
        done.push_back(*it);
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    if (plan.ingest_id >= 0) {
      REQUIRE(plan.ingest_id == ingest.front().id);
      ingest.front().remaining -= plan.ingest_tokens;
      ingest_progress += plan.ingest_tokens;
      if (ingest.front().remaining == 0) ingest.erase(ingest.begin());
    }
    ++step;
  }

  void Add(int64_t id, int64_t prompt, int64_t max_tokens, int64_t align = 1) {
    SimRequest r;
    r.s.id = id;
    r.s.prefill_align = align;
    r.s.prompt_remaining = prompt;
    r.s.reserved_tokens = prompt + max_tokens;
    r.max_tokens = max_tokens;
    waiting.push_back(r);
  }
};

SchedulerLimits Limits() {
  SchedulerLimits l;
  l.max_batch_tokens = 64;
  l.max_running = 8;
  l.prefill_chunk_tokens = 64;
  l.ingest_chunk_tokens = 48;
  l.ingest_floor_tokens = 6;
  l.kv_capacity_tokens = 2000;
  return l;
}

TEST_CASE("decode comes first and every running request gets one token per step") {
  Simulation sim{Limits()};
  for (int i = 0; i < 4; ++i) sim.Add(i, 10, 50);
  sim.Step();  // admits all four; prefills 10 each (40 tokens)
  REQUIRE(sim.running.size() == 4);
  sim.Add(99, 200, 5);  // a long prompt arrives
  for (int s = 0; s < 5; ++s) {
    std::vector<int64_t> before;
    for (auto& r : sim.running) before.push_back(r.generated);
    sim.Step();
    for (size_t i = 0; i < 4; ++i) CHECK(sim.running[i].generated == before[i] + 1);
  }
}

TEST_CASE("long prompts are chunked under the step budget") {
  Simulation sim{Limits()};
  sim.Add(1, 1000, 3);
  int steps = 0;
  while (!sim.running.empty() || !sim.waiting.empty()) {
    sim.Step();
    ++steps;
  }
  CHECK(steps == 1000 / 64 + 1 + 2);  // 16 prefill steps (last one samples), then 2 decodes
  CHECK(sim.done.size() == 1);
}

TEST_CASE("admission reserves KV for the worst case and never overtakes") {
  SchedulerLimits l = Limits();
  l.kv_capacity_tokens = 300;
  Simulation sim{l};
  sim.Add(1, 100, 100);  // 200
  sim.Add(2, 100, 100);  // would exceed 300: waits
  sim.Add(3, 10, 10);    // fits, but must not overtake 2
  sim.Step();
  CHECK(sim.running.size() == 1);
  CHECK(sim.waiting.size() == 2);
  while (sim.done.empty()) sim.Step();
  sim.Step();
  CHECK(sim.running.front().s.id == 2);
}

TEST_CASE("cancelled requests leave at the next step boundary") {
  Simulation sim{Limits()};
  sim.Add(1, 5, 100);
  sim.Add(2, 5, 100);
  sim.Step();
  sim.running[0].s.cancelled = true;
  sim.Add(3, 5, 100);
  sim.waiting[0].s.cancelled = true;
  sim.Step();
  REQUIRE(sim.running.size() == 1);
  CHECK(sim.running[0].s.id == 2);
  CHECK(sim.waiting.empty());
}

TEST_CASE("ingestion uses spare budget and progresses under a saturated query load") {
  SchedulerLimits l = Limits();
  l.max_running = 64;
  l.kv_capacity_tokens = 1 << 20;
  Simulation sim{l};
  sim.ingest.push_back({7, 1000});
  for (int i = 0; i < 64; ++i) sim.Add(100 + i, 1, 1000);  // 64 decoders fill the 64-token budget
  for (int s = 0; s < 10; ++s) sim.Step();
  CHECK(sim.ingest_progress > 0);
  CHECK(sim.ingest_progress <= 10 * l.ingest_floor_tokens + 48);
  // Idle queries: ingestion takes whole chunks.
  Simulation idle{Limits()};
  idle.ingest.push_back({8, 100});
  idle.Step();
  CHECK(idle.ingest_progress == 48);
  idle.Step();
  idle.Step();
  CHECK(idle.ingest.empty());
}

TEST_CASE("aligned requests prefill in chunks that end on their alignment, except the last") {
  SchedulerLimits l = Limits();
  l.max_batch_tokens = 45;  // not a multiple of 16: an unaligned request is cut mid-block
  l.prefill_chunk_tokens = 45;
  Simulation sim{l};
  const std::vector<int64_t> prompts = {1, 3, 16, 17, 127, 129};
  for (size_t i = 0; i < prompts.size(); ++i) sim.Add(i, prompts[i], 3, /*align=*/16);
  sim.Add(100, 129, 3);                // no alignment
  sim.Add(200, 129, 3, /*align=*/64);  // a 64-token chunk never fits a 45-token step: ignored
  for (int s = 0; s < 200 && sim.done.size() < prompts.size() + 2; ++s) sim.Step();
  REQUIRE(sim.done.size() == prompts.size() + 2);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt of " << prompts[i] << " tokens");
    const auto& c = sim.chunks[i];
    int64_t total = 0;
    for (size_t k = 0; k < c.size(); ++k) {
      if (k + 1 < c.size()) CHECK(c[k] % 16 == 0);
      total += c[k];
    }
    CHECK(total == prompts[i]);
  }
  CHECK(sim.chunks[100].front() % 16 != 0);
  // Request 200 completed (checked above) in unaligned chunks rather than waiting forever.
  int64_t total_200 = 0;
  for (int64_t c : sim.chunks[200]) total_200 += c;
  CHECK(total_200 == 129);
  CHECK(sim.chunks[200].front() % 64 != 0);
}

TEST_CASE("random arrivals all complete under the invariants") {
  std::mt19937 rng(42);
  Simulation sim{Limits()};
  int64_t next_id = 0;
  for (int s = 0; s < 3000 && (next_id < 200 || !sim.running.empty() || !sim.waiting.empty());
       ++s) {
    if (next_id < 200 && rng() % 3 == 0) {
      const int64_t align = std::vector<int64_t>{1, 1, 16, 64, 100}[rng() % 5];
      sim.Add(next_id++, 1 + rng() % 150, 1 + rng() % 40, align);
    }
    sim.Step();
  }
  REQUIRE(sim.done.size() == 200);
  // Every step checked the invariants (budget, reservation, FCFS admission); nothing starved:
  // a request decodes to completion within its max_tokens steps once it has its first token.
  for (const auto& r : sim.done) CHECK(r.done_step - r.first_token_step <= r.max_tokens);
}

}  // namespace
}  // namespace sqz
