// PagedSequences: the host-side bookkeeping of the CUDA backend. It owns the sequence table (own
// token counts and block tables into a paged KV pool of `total_blocks` blocks of kKvBlockTokens
// tokens) and turns one Forward batch into a StepLayout: the validated, device-ready description
// of the step's rows (token ids, positions, KV slots, attention block tables, logit rows), packed
// into one int32 array so that the backend copies it to the device in one transfer.
//
// Pure host code (no CUDA): tested on machines without a GPU.
// Row order on the device: items with exactly one new token (decode) come first, in batch order,
// then the others (prefill chunks), in batch order; logit rows are mapped back to the caller's
// order through StepLayout::logit_rows.
// Ownership: owns its tables; StepLayout holds no pointers into them. Thread safety: not
// thread-safe (one engine thread owns the backend).
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/model/backend.h"

namespace sqz {

struct StepLimits {
  int64_t vocab = 0;            // token ids must lie in [0, vocab)
  int64_t max_positions = 0;    // own positions must stay below it
  int64_t max_step_tokens = 0;  // tokens one step may carry (device buffers are sized for it)
};

struct StepLayout {
  struct Item {
    int64_t batch_index = 0;  // index into the Forward batch
    int64_t row0 = 0;         // first device row
    int64_t n = 0;            // new tokens
    int64_t cached = 0;       // own tokens cached before the step
    int64_t context_len = 0;  // fixed-context tokens before the own ones (0: none); the first
                              // row's absolute position (RoPE) is context_len + cached
    int64_t table = 0;        // offset of its block table in the block_ids section
    int64_t blocks = 0;       // entries of its block table (after the step's blocks were taken)
    bool all_logits = false;
    float* q_out = nullptr;  // the caller's capture buffer, or null
  };

  int64_t rows = 0;             // tokens of the step
  int64_t out_rows = 0;         // logit rows
  int64_t decode_items = 0;     // items[0, decode_items) have n == 1 and rows [0, decode_items)
  int64_t max_decode_keys = 0;  // largest cached + 1 over the decode items
  std::vector<Item> items;      // device order (see the file comment)
  std::vector<int32_t> item_of_batch;  // [batch size] index into items of each batch entry

  // int32 sections of `ints` (offsets in elements):
  //   ids [rows], positions [rows] (absolute, for RoPE: context_len + own position), slots [rows]
  //   (block * kKvBlockTokens + slot of each row's new key), row_keys [rows] (own keys the row
  //   attends to: its own position + 1), row_table [rows] (offset
  //   of the row's block table in block_ids), logit_rows [out_rows] (device row of each logit row,
  //   in the caller's order), own_len [decode_items] (keys of each decode item), indptr
  //   [decode_items + 1] (CSR offsets of the decode items' block tables in block_ids), block_ids
  //   [sum of items' blocks] (the block tables, decode items first, in device order).
  std::vector<int32_t> ints;
  int64_t off_ids = 0, off_positions = 0, off_slots = 0, off_row_keys = 0, off_row_table = 0,
          off_logit_rows = 0, off_own_len = 0, off_indptr = 0, off_block_ids = 0;

  // Capacity in int32 that `ints` can need for a step of at most max_step_tokens tokens over a
  // pool of total_blocks blocks (a sequence's blocks appear in one item only).
  static int64_t MaxInts(int64_t max_step_tokens, int64_t total_blocks);
};

class PagedSequences {
 public:
  // total_blocks >= 1 (checked by the backend before construction).
  explicit PagedSequences(int64_t total_blocks);

  PagedSequences(const PagedSequences&) = delete;
  PagedSequences& operator=(const PagedSequences&) = delete;

  // A new empty sequence; ids are never reused.
  SeqId Add();
  // Returns the sequence's blocks to the free list. NOT_FOUND for an unknown id.
  Status Free(SeqId seq);
  // Own tokens cached for seq, or -1 for an unknown id.
  int64_t Length(SeqId seq) const;
  // The block table of seq (block of own tokens [16 b, 16 b + 16) at entry b), or null if unknown.
  const std::vector<int32_t>* Blocks(SeqId seq) const;
  KvPoolStats Stats() const;

  // Validates `batch` (Backend::Forward's contract: a sequence keeps the context length of its
  // first step; positions are context length + own position) and, only if it is valid, takes the KV
  // blocks the step's new tokens need and fills *layout (its vectors' capacity is reused). On error
  // nothing changes. Lengths do not advance until Advance.
  Status Prepare(std::span<const StepInput> batch, const StepLimits& limits, StepLayout* layout);
  // Advances every item's length by its new tokens (after the step ran).
  void Advance(const StepLayout& layout, std::span<const StepInput> batch);

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
    int64_t context_length = -1;  // set by the first step: its context's length (0: none)
    uint64_t stamp = 0;           // step_stamp_ of the last Prepare that saw it (duplicate check)
  };

  const int64_t total_blocks_;
  std::unordered_map<SeqId, Sequence> sequences_;
  std::vector<int32_t> free_blocks_;  // stack; block 0 handed out first
  SeqId next_id_ = 0;
  uint64_t step_stamp_ = 0;
};

}  // namespace sqz
