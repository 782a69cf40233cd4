// BpeMerger: the merge loop shared by both BPE flavours. A table maps an adjacent pair of token ids
// to (rank, merged id); Merge repeatedly merges the pair of lowest rank, leftmost first on ties,
// until no adjacent pair is in the table. This is the rule of Hugging Face `tokenizers` (ranks =
// merge order) and of SentencePiece BPE (ranks = merged piece's score, best first).
//
// Cost: O(n log n) for n symbols (a heap of candidate pairs over a linked list of symbols), so a
// whole 32K-token document may be merged at once.
// Thread safety: the table is built single-threaded; Merge is const and may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace sqz {

// One symbol: a token id (-1: not in the vocabulary, never merges) and the bytes [begin, end) of
// the input it covers.
struct BpeSymbol {
  int32_t id;
  uint32_t begin;
  uint32_t end;
};

class BpeMerger {
 public:
  // Adds (left, right) -> merged with `rank` (lower merges first). An existing pair keeps its
  // lower rank. Returns false if the pair was already present.
  bool AddMerge(int32_t left, int32_t right, int32_t merged, int32_t rank);

  // Merges *symbols in place; on return no adjacent pair of them is in the table.
  void Merge(std::vector<BpeSymbol>* symbols) const;

  size_t size() const { return pairs_.size(); }

 private:
  struct Target {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const Target* Find(int32_t left, int32_t right) const;

  std::unordered_map<uint64_t, Target> pairs_;
};

}  // namespace sqz
