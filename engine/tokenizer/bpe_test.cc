#include "engine/tokenizer/bpe.h"

#include <catch2/catch.hpp>
#include <map>
#include <random>

namespace sqz {
namespace {

// The textbook O(n^2) loop: merge the lowest-ranked adjacent pair, leftmost on ties, until none.
std::vector<BpeSymbol> ReferenceMerge(std::vector<BpeSymbol> s,
                                      const std::map<std::pair<int, int>, std::pair<int, int>>& t) {
  while (true) {
    int best = -1, best_rank = 0;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      auto it = t.find({s[i].id, s[i + 1].id});
      if (it != t.end() && (best < 0 || it->second.first < best_rank)) {
        best = static_cast<int>(i);
        best_rank = it->second.first;
      }
    }
    if (best < 0) return s;
    s[best].id = t.at({s[best].id, s[best + 1].id}).second;
    s[best].end = s[best + 1].end;
    s.erase(s.begin() + best + 1);
  }
}

TEST_CASE("BpeMerger merges by rank then leftmost") {
  BpeMerger m;
  // ids: a=0 b=1 c=2 ab=3 bc=4 abc=5
  m.AddMerge(1, 2, 4, 0);  // b c -> bc, best
  m.AddMerge(0, 1, 3, 1);  // a b -> ab
  m.AddMerge(0, 4, 5, 2);  // a bc -> abc
  std::vector<BpeSymbol> s = {{0, 0, 1}, {1, 1, 2}, {2, 2, 3}};
  m.Merge(&s);
  REQUIRE(s.size() == 1);
  CHECK(s[0].id == 5);
  CHECK(s[0].begin == 0);
  CHECK(s[0].end == 3);

  // "aaa" with a a -> aa: the leftmost pair merges first, leaving "aa a".
  BpeMerger m2;
  m2.AddMerge(0, 0, 1, 0);
  std::vector<BpeSymbol> t = {{0, 0, 1}, {0, 1, 2}, {0, 2, 3}};
  m2.Merge(&t);
  REQUIRE(t.size() == 2);
  CHECK(t[0].id == 1);
  CHECK(t[1].id == 0);
  CHECK(t[1].begin == 2);
}

TEST_CASE("BpeMerger keeps the lower rank of a repeated pair and never merges unknowns") {
  BpeMerger m;
  CHECK(m.AddMerge(0, 1, 2, 5));
  CHECK_FALSE(m.AddMerge(0, 1, 3, 1));  // same pair, lower rank wins
  CHECK(m.size() == 1);
  std::vector<BpeSymbol> s = {{0, 0, 1}, {1, 1, 2}, {-1, 2, 3}, {0, 3, 4}};
  m.Merge(&s);
  REQUIRE(s.size() == 3);
  CHECK(s[0].id == 3);
  CHECK(s[1].id == -1);
  CHECK(s[2].id == 0);
}

TEST_CASE("BpeMerger equals the quadratic reference on random tables and inputs") {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    const int alphabet = 2 + static_cast<int>(rng() % 5);
    std::map<std::pair<int, int>, std::pair<int, int>> table;
    BpeMerger m;
    int next_id = alphabet;
    const int n_merges = static_cast<int>(rng() % 40);
    for (int r = 0; r < n_merges; ++r) {
      const int l = static_cast<int>(rng() % next_id), rt = static_cast<int>(rng() % next_id);
      const int rank = static_cast<int>(rng() % 30);  // ties on purpose
      if (table.count({l, rt})) continue;
      table[{l, rt}] = {rank, next_id};
      m.AddMerge(l, rt, next_id, rank);
      ++next_id;
    }
    for (int len : {0, 1, 3, 127, 129}) {
      std::vector<BpeSymbol> s;
      for (int i = 0; i < len; ++i) {
        const int id = (rng() % 17 == 0) ? -1 : static_cast<int>(rng() % alphabet);
        s.push_back({id, static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1)});
      }
      std::vector<BpeSymbol> expected = ReferenceMerge(s, table);
      m.Merge(&s);
      REQUIRE(s.size() == expected.size());
      for (size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i].id == expected[i].id);
        CHECK(s[i].begin == expected[i].begin);
        CHECK(s[i].end == expected[i].end);
      }
    }
  }
}

}  // namespace
}  // namespace sqz
