#include "engine/tokenizer/bpe.h"

#include <queue>

namespace sqz {

bool BpeMerger::AddMerge(int32_t left, int32_t right, int32_t merged, int32_t rank) {
  auto [it, inserted] = pairs_.try_emplace(Key(left, right), Target{rank, merged});
  if (!inserted && rank < it->second.rank) it->second = Target{rank, merged};
  return inserted;
}

const BpeMerger::Target* BpeMerger::Find(int32_t left, int32_t right) const {
  if (left < 0 || right < 0) return nullptr;
  auto it = pairs_.find(Key(left, right));
  return it == pairs_.end() ? nullptr : &it->second;
}

void BpeMerger::Merge(std::vector<BpeSymbol>* symbols) const {
  std::vector<BpeSymbol>& sym = *symbols;
  const int n = static_cast<int>(sym.size());
  if (n < 2) return;
  // Doubly linked list over sym; a merged-away symbol gets id -2.
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;  // index of the left symbol; its position breaks ties (leftmost first)
    int right;
    int32_t left_id, right_id;  // ids when queued: a candidate is stale if either changed
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    if (const Target* t = Find(sym[left].id, sym[right].id)) {
      heap.push(Candidate{t->rank, left, right, sym[left].id, sym[right].id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (next[c.left] != c.right || sym[c.left].id != c.left_id || sym[c.right].id != c.right_id) {
      continue;  // stale: one side was merged since it was queued
    }
    sym[c.left].id = Find(c.left_id, c.right_id)->merged;
    sym[c.left].end = sym[c.right].end;
    sym[c.right].id = -2;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  int out = 0;
  for (int i = 0; i >= 0; i = next[i]) sym[out++] = sym[i];
  sym.resize(out);
}

}  // namespace sqz
