#include "engine/cuda/paged_sequences.h"

#include <catch2/catch.hpp>
#include <random>
#include <set>
#include <vector>

namespace sqz {
namespace {

constexpr StepLimits kLimits{/*vocab=*/100, /*max_positions=*/1000, /*max_step_tokens=*/64};

class FakeContext : public ContextAttention {
 public:
  explicit FakeContext(int64_t length = 3) : length_(length) {}
  int64_t length() const override { return length_; }
  void Attend(int, const float*, int64_t, int64_t, float*, cpu::AttentionPartial*) const override {}

 private:
  int64_t length_;
};

std::vector<int32_t> Section(const StepLayout& L, int64_t off, int64_t n) {
  return {L.ints.begin() + off, L.ints.begin() + off + n};
}

TEST_CASE("PagedSequences: ids, lengths, free and stats") {
  PagedSequences t(8);
  const SeqId a = t.Add(), b = t.Add();
  CHECK(a != b);
  CHECK(t.Length(a) == 0);
  CHECK(t.Length(12345) == -1);
  CHECK(t.Blocks(12345) == nullptr);
  CHECK(t.Stats().sequences == 2);
  CHECK(t.Stats().free_blocks == 8);
  REQUIRE(t.Free(a).ok());
  const Status s = t.Free(a);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message().find("unknown sequence") != std::string::npos);
  const SeqId c = t.Add();
  CHECK(c != a);  // never reused
  CHECK(t.Stats().sequences == 2);
}

TEST_CASE("PagedSequences: decode items first, rows, slots, tables and logit rows") {
  PagedSequences t(16);
  const SeqId a = t.Add(), b = t.Add(), c = t.Add();
  // Give b 17 cached tokens (two blocks) first.
  std::vector<int32_t> b_prompt(17, 5);
  StepLayout L;
  std::vector<StepInput> first = {{b, b_prompt}};
  REQUIRE(t.Prepare(first, kLimits, &L).ok());
  t.Advance(L, first);
  REQUIRE(t.Length(b) == 17);
  const std::vector<int32_t> b_blocks = *t.Blocks(b);
  REQUIRE(b_blocks.size() == 2);

  // Batch: a prefill of 3 (all logits), b decode of 1, c prefill of 2 (last logit only).
  const std::vector<int32_t> ta = {1, 2, 3}, tb = {4}, tc = {7, 8};
  std::vector<StepInput> batch = {{a, ta}, {b, tb}, {c, tc}};
  batch[0].all_logits = true;
  REQUIRE(t.Prepare(batch, kLimits, &L).ok());
  CHECK(L.rows == 6);
  CHECK(L.out_rows == 3 + 1 + 1);
  CHECK(L.decode_items == 1);
  CHECK(L.max_decode_keys == 18);
  REQUIRE(L.items.size() == 3);
  CHECK(L.items[0].batch_index == 1);  // b (decode) first
  CHECK(L.items[1].batch_index == 0);
  CHECK(L.items[2].batch_index == 2);
  CHECK(L.items[0].row0 == 0);
  CHECK(L.items[1].row0 == 1);
  CHECK(L.items[2].row0 == 4);
  CHECK(Section(L, L.off_ids, 6) == std::vector<int32_t>{4, 1, 2, 3, 7, 8});
  CHECK(Section(L, L.off_positions, 6) == std::vector<int32_t>{17, 0, 1, 2, 0, 1});
  CHECK(Section(L, L.off_row_keys, 6) == std::vector<int32_t>{18, 1, 2, 3, 1, 2});
  // Logit rows in the caller's order: a's three rows, b's row, c's last row.
  CHECK(Section(L, L.off_logit_rows, 5) == std::vector<int32_t>{1, 2, 3, 0, 5});
  // b decodes at position 17: block table entry 1, slot 1.
  CHECK(L.ints[L.off_slots + 0] == b_blocks[1] * 16 + 1);
  const std::vector<int32_t>& a_blocks = *t.Blocks(a);
  const std::vector<int32_t>& c_blocks = *t.Blocks(c);
  REQUIRE(a_blocks.size() == 1);
  REQUIRE(c_blocks.size() == 1);
  CHECK(L.ints[L.off_slots + 1] == a_blocks[0] * 16);
  CHECK(L.ints[L.off_slots + 3] == a_blocks[0] * 16 + 2);
  CHECK(L.ints[L.off_slots + 5] == c_blocks[0] * 16 + 1);
  // Block tables: b's (2 entries) then a's then c's.
  CHECK(Section(L, L.off_block_ids, 4) ==
        std::vector<int32_t>{b_blocks[0], b_blocks[1], a_blocks[0], c_blocks[0]});
  CHECK(Section(L, L.off_row_table, 6) == std::vector<int32_t>{0, 2, 2, 2, 3, 3});
  CHECK(Section(L, L.off_own_len, 1) == std::vector<int32_t>{18});
  CHECK(Section(L, L.off_indptr, 2) == std::vector<int32_t>{0, 2});
  CHECK(static_cast<int64_t>(L.ints.size()) <= StepLayout::MaxInts(kLimits.max_step_tokens, 16));
  // Lengths move only on Advance.
  CHECK(t.Length(a) == 0);
  t.Advance(L, batch);
  CHECK(t.Length(a) == 3);
  CHECK(t.Length(b) == 18);
  CHECK(t.Length(c) == 2);
}

TEST_CASE("PagedSequences: a block is taken only when a token needs a slot in it") {
  PagedSequences t(4);
  const SeqId a = t.Add();
  StepLayout L;
  std::vector<int32_t> toks(15, 1);
  for (int64_t n : {15, 1, 1, 15, 1}) {
    std::vector<StepInput> batch = {{a, {toks.data(), static_cast<size_t>(n)}}};
    REQUIRE(t.Prepare(batch, kLimits, &L).ok());
    t.Advance(L, batch);
    CHECK(static_cast<int64_t>(t.Blocks(a)->size()) == (t.Length(a) + 15) / 16);
  }
  CHECK(t.Length(a) == 33);
  CHECK(t.Stats().used_blocks == 3);
  REQUIRE(t.Free(a).ok());
  CHECK(t.Stats().free_blocks == 4);
}

TEST_CASE("PagedSequences: every invalid step is refused with a clear message and no change") {
  PagedSequences t(2);
  const SeqId a = t.Add(), b = t.Add();
  StepLayout L;
  const std::vector<int32_t> one = {1}, bad_low = {-1}, bad_high = {100}, many(40, 1);
  FakeContext ctx;
  struct Case {
    std::vector<StepInput> batch;
    StepLimits limits;
    StatusCode code;
    std::string text;
  };
  std::vector<StepInput> with_ctx = {{a, one}};
  with_ctx[0].context = &ctx;
  const StepLimits small_positions{100, 3, 64};
  const StepLimits small_step{100, 1000, 30};
  const std::vector<Case> cases = {
      {{{777, one}}, kLimits, StatusCode::kInvalidArgument, "unknown sequence"},
      {{{a, one}, {a, one}}, kLimits, StatusCode::kInvalidArgument, "appears twice"},
      {{{a, {}}}, kLimits, StatusCode::kInvalidArgument, "no tokens"},
      {with_ctx, small_positions, StatusCode::kOutOfRange, "positions up to 4 exceed"},
      {{{a, bad_low}}, kLimits, StatusCode::kInvalidArgument, "outside the vocabulary [0, 100)"},
      {{{a, bad_high}}, kLimits, StatusCode::kInvalidArgument, "token id 100"},
      {{{a, many}}, small_positions, StatusCode::kOutOfRange, "max_position_embeddings 3"},
      {{{a, many}}, small_step, StatusCode::kInvalidArgument, "max_step_tokens = 30"},
      {{{a, many}}, kLimits, StatusCode::kResourceExhausted, "needs 3 new KV blocks"},
      {{{a, many}, {b, one}}, kLimits, StatusCode::kResourceExhausted, "only 2 of 2 are free"},
  };
  for (const Case& c : cases) {
    const Status s = t.Prepare(c.batch, c.limits, &L);
    INFO(s.ToString());
    CHECK(s.code() == c.code);
    CHECK(s.message().find(c.text) != std::string::npos);
    CHECK(t.Stats().free_blocks == 2);
    CHECK(t.Length(a) == 0);
    CHECK(t.Length(b) == 0);
  }
  // The same sequence may appear again in the next step after a refused one.
  std::vector<StepInput> ok = {{a, one}};
  CHECK(t.Prepare(ok, kLimits, &L).ok());
}

TEST_CASE("PagedSequences: a context shifts positions, not slots, and its length is fixed") {
  PagedSequences t(8);
  const SeqId a = t.Add(), b = t.Add();
  FakeContext ctx(100), other(7);
  StepLayout L;
  const std::vector<int32_t> three = {1, 2, 3}, one = {4};
  std::vector<StepInput> batch = {{a, three}, {b, one}};
  batch[0].context = &ctx;
  REQUIRE(t.Prepare(batch, kLimits, &L).ok());
  // Decode item b first (no context), then a's three rows at positions 100, 101, 102.
  CHECK(Section(L, L.off_positions, 4) == std::vector<int32_t>{0, 100, 101, 102});
  CHECK(Section(L, L.off_row_keys, 4) == std::vector<int32_t>{1, 1, 2, 3});
  CHECK(L.items[1].context_len == 100);
  CHECK(L.items[0].context_len == 0);
  t.Advance(L, batch);
  // a keeps its context length; b (started without one) may not take one later.
  std::vector<StepInput> next = {{a, one}};
  next[0].context = &other;
  Status s = t.Prepare(next, kLimits, &L);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("context length 7 differs from the 100") != std::string::npos);
  next = {{b, one}};
  next[0].context = &ctx;
  s = t.Prepare(next, kLimits, &L);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("differs from the 0") != std::string::npos);
  next = {{a, one}};
  next[0].context = &ctx;
  REQUIRE(t.Prepare(next, kLimits, &L).ok());
  CHECK(L.ints[L.off_positions] == 103);
  CHECK(L.ints[L.off_own_len] == 4);
  CHECK(L.items[0].context_len == 100);
}

TEST_CASE("PagedSequences: random steps keep block tables disjoint and slots consistent") {
  std::mt19937 rng(1234);
  PagedSequences t(64);
  std::vector<SeqId> live;
  StepLayout L;
  std::vector<std::vector<int32_t>> tokens;
  for (int step = 0; step < 300; ++step) {
    if (live.size() < 5 && rng() % 3 == 0) live.push_back(t.Add());
    if (!live.empty() && rng() % 17 == 0) {
      const size_t i = rng() % live.size();
      REQUIRE(t.Free(live[i]).ok());
      live.erase(live.begin() + i);
    }
    std::vector<StepInput> batch;
    tokens.assign(live.size(), {});
    for (size_t i = 0; i < live.size(); ++i) {
      if (rng() % 4 == 0) continue;
      const int n = rng() % 3 == 0 ? 1 + static_cast<int>(rng() % 12) : 1;
      for (int j = 0; j < n; ++j) tokens[i].push_back(static_cast<int32_t>(rng() % 100));
      batch.push_back({live[i], tokens[i]});
      batch.back().all_logits = rng() % 2 == 0;
    }
    const Status s = t.Prepare(batch, kLimits, &L);
    if (!s.ok()) {
      // Only running out of blocks or positions is expected; free the oldest sequence.
      REQUIRE((s.code() == StatusCode::kResourceExhausted || s.code() == StatusCode::kOutOfRange));
      REQUIRE(t.Free(live.front()).ok());
      live.erase(live.begin());
      continue;
    }
    std::set<int32_t> slots;
    for (int64_t r = 0; r < L.rows; ++r) {
      CHECK(slots.insert(L.ints[L.off_slots + r]).second);
      // The slot is where the row's position lands through its own block table.
      const int32_t pos = L.ints[L.off_positions + r];
      const int32_t table = L.ints[L.off_row_table + r];
      CHECK(L.ints[L.off_slots + r] == L.ints[L.off_block_ids + table + pos / 16] * 16 + pos % 16);
      CHECK(L.ints[L.off_row_keys + r] == pos + 1);
    }
    std::set<int32_t> owned;
    for (SeqId id : live) {
      for (int32_t blk : *t.Blocks(id)) CHECK(owned.insert(blk).second);
    }
    CHECK(static_cast<int64_t>(owned.size()) == t.Stats().used_blocks);
    t.Advance(L, batch);
  }
}

}  // namespace
}  // namespace sqz
