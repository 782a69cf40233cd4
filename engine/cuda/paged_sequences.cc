#include "engine/cuda/paged_sequences.h"

#include <algorithm>
#include <string>

namespace sqz {

int64_t StepLayout::MaxInts(int64_t max_step_tokens, int64_t total_blocks) {
  // ids, positions, slots, row_keys, row_table, logit_rows: 6 per token; own_len and indptr:
  // at most 2 * (tokens + 1); block_ids: at most every block once.
  return 6 * max_step_tokens + 2 * (max_step_tokens + 1) + total_blocks;
}

PagedSequences::PagedSequences(int64_t total_blocks) : total_blocks_(total_blocks) {
  free_blocks_.reserve(total_blocks_);
  for (int64_t b = total_blocks_ - 1; b >= 0; --b) free_blocks_.push_back(static_cast<int32_t>(b));
}

SeqId PagedSequences::Add() {
  const SeqId id = next_id_++;
  sequences_.emplace(id, Sequence{});
  return id;
}

Status PagedSequences::Free(SeqId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return NotFoundError("FreeSequence: unknown sequence " + std::to_string(seq));
  }
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) {
    free_blocks_.push_back(*b);
  }
  sequences_.erase(it);
  return OkStatus();
}

int64_t PagedSequences::Length(SeqId seq) const {
  auto it = sequences_.find(seq);
  return it == sequences_.end() ? -1 : it->second.length;
}

const std::vector<int32_t>* PagedSequences::Blocks(SeqId seq) const {
  auto it = sequences_.find(seq);
  return it == sequences_.end() ? nullptr : &it->second.blocks;
}

KvPoolStats PagedSequences::Stats() const {
  KvPoolStats s;
  s.total_blocks = total_blocks_;
  s.free_blocks = static_cast<int64_t>(free_blocks_.size());
  s.used_blocks = s.total_blocks - s.free_blocks;
  s.sequences = static_cast<int64_t>(sequences_.size());
  return s;
}

Status PagedSequences::Prepare(std::span<const StepInput> batch, const StepLimits& limits,
                               StepLayout* layout) {
  // ---- Validate everything before changing any state. Messages are built only on error, so a
  // valid step allocates nothing once the layout's vectors have grown.
  auto where = [&](size_t i) {
    return "Forward: batch item " + std::to_string(i) + " (sequence " +
           std::to_string(batch[i].seq) + ")";
  };
  ++step_stamp_;
  int64_t rows = 0, needed_blocks = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    auto it = sequences_.find(in.seq);
    if (it == sequences_.end()) return InvalidArgumentError(where(i) + ": unknown sequence");
    if (it->second.stamp == step_stamp_) {
      return InvalidArgumentError(where(i) + ": sequence appears twice in one step");
    }
    it->second.stamp = step_stamp_;
    if (in.tokens.empty()) return InvalidArgumentError(where(i) + ": no tokens");
    const int64_t ctx_len = in.context != nullptr ? in.context->length() : 0;
    if (it->second.context_length >= 0 && it->second.context_length != ctx_len) {
      return InvalidArgumentError(where(i) + ": context length " + std::to_string(ctx_len) +
                                  " differs from the " + std::to_string(it->second.context_length) +
                                  " the sequence started with");
    }
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      if (in.tokens[t] < 0 || in.tokens[t] >= limits.vocab) {
        return InvalidArgumentError(where(i) + ": token id " + std::to_string(in.tokens[t]) +
                                    " at index " + std::to_string(t) +
                                    " is outside the vocabulary [0, " +
                                    std::to_string(limits.vocab) + ")");
      }
    }
    const Sequence& s = it->second;
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (ctx_len + s.length + n > limits.max_positions) {
      return OutOfRangeError(
          where(i) + ": positions up to " + std::to_string(ctx_len + s.length + n) +
          " exceed max_position_embeddings " + std::to_string(limits.max_positions));
    }
    const int64_t blocks_after = (s.length + n + kKvBlockTokens - 1) / kKvBlockTokens;
    needed_blocks += blocks_after - static_cast<int64_t>(s.blocks.size());
    rows += n;
  }
  if (rows > limits.max_step_tokens) {
    return InvalidArgumentError("Forward: the step has " + std::to_string(rows) +
                                " tokens, more than CudaBackendOptions.max_step_tokens = " +
                                std::to_string(limits.max_step_tokens));
  }
  if (needed_blocks > static_cast<int64_t>(free_blocks_.size())) {
    return ResourceExhaustedError("Forward: the step needs " + std::to_string(needed_blocks) +
                                  " new KV blocks but only " + std::to_string(free_blocks_.size()) +
                                  " of " + std::to_string(total_blocks_) + " are free");
  }

  // ---- Take blocks; order the items (decode first).
  StepLayout& L = *layout;
  L.items.clear();
  L.rows = rows;
  L.out_rows = 0;
  L.decode_items = 0;
  L.max_decode_keys = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < batch.size(); ++i) {
      const StepInput& in = batch[i];
      const int64_t n = static_cast<int64_t>(in.tokens.size());
      if ((pass == 0) != (n == 1)) continue;
      Sequence& s = sequences_[in.seq];
      while (static_cast<int64_t>(s.blocks.size()) * kKvBlockTokens < s.length + n) {
        s.blocks.push_back(free_blocks_.back());
        free_blocks_.pop_back();
      }
      StepLayout::Item item;
      item.batch_index = static_cast<int64_t>(i);
      item.n = n;
      item.cached = s.length;
      item.context_len = in.context != nullptr ? in.context->length() : 0;
      item.blocks = static_cast<int64_t>(s.blocks.size());
      item.all_logits = in.all_logits;
      item.q_out = in.q_out;
      L.items.push_back(item);
      if (pass == 0) {
        ++L.decode_items;
        L.max_decode_keys = std::max(L.max_decode_keys, s.length + 1);
      }
    }
  }
  int64_t row = 0, table = 0;
  for (StepLayout::Item& item : L.items) {
    item.row0 = row;
    item.table = table;
    row += item.n;
    table += item.blocks;
    L.out_rows += item.all_logits ? item.n : 1;
  }
  const int64_t total_table = table;

  // ---- Pack the int32 sections.
  L.off_ids = 0;
  L.off_positions = L.off_ids + rows;
  L.off_slots = L.off_positions + rows;
  L.off_row_keys = L.off_slots + rows;
  L.off_row_table = L.off_row_keys + rows;
  L.off_logit_rows = L.off_row_table + rows;
  L.off_own_len = L.off_logit_rows + L.out_rows;
  L.off_indptr = L.off_own_len + L.decode_items;
  L.off_block_ids = L.off_indptr + L.decode_items + 1;
  L.ints.resize(L.off_block_ids + total_table);
  int32_t* ints = L.ints.data();
  // Device row of each batch item's first token, for the logit rows in the caller's order.
  for (const StepLayout::Item& item : L.items) {
    const StepInput& in = batch[item.batch_index];
    const Sequence& s = sequences_[in.seq];
    for (int64_t t = 0; t < item.n; ++t) {
      const int64_t r = item.row0 + t, pos = item.cached + t;
      ints[L.off_ids + r] = in.tokens[t];
      ints[L.off_positions + r] = static_cast<int32_t>(item.context_len + pos);
      ints[L.off_slots + r] =
          s.blocks[pos / kKvBlockTokens] * static_cast<int32_t>(kKvBlockTokens) +
          static_cast<int32_t>(pos % kKvBlockTokens);
      ints[L.off_row_keys + r] = static_cast<int32_t>(pos + 1);
      ints[L.off_row_table + r] = static_cast<int32_t>(item.table);
    }
    for (int64_t b = 0; b < item.blocks; ++b) ints[L.off_block_ids + item.table + b] = s.blocks[b];
  }
  for (int64_t d = 0; d < L.decode_items; ++d) {
    const StepLayout::Item& item = L.items[d];
    ints[L.off_own_len + d] = static_cast<int32_t>(item.cached + 1);
    ints[L.off_indptr + d] = static_cast<int32_t>(item.table);
  }
  ints[L.off_indptr + L.decode_items] = static_cast<int32_t>(
      L.decode_items > 0 ? L.items[L.decode_items - 1].table + L.items[L.decode_items - 1].blocks
                         : 0);
  // Logit rows in the caller's batch order.
  L.item_of_batch.resize(batch.size());
  for (size_t j = 0; j < L.items.size(); ++j) {
    L.item_of_batch[L.items[j].batch_index] = static_cast<int32_t>(j);
  }
  int64_t o = 0;
  for (const int32_t j : L.item_of_batch) {
    const StepLayout::Item* item = &L.items[j];
    const int64_t first = item->all_logits ? 0 : item->n - 1;
    for (int64_t t = first; t < item->n; ++t) {
      ints[L.off_logit_rows + o++] = static_cast<int32_t>(item->row0 + t);
    }
  }
  return OkStatus();
}

void PagedSequences::Advance(const StepLayout& layout, std::span<const StepInput> batch) {
  for (const StepLayout::Item& item : layout.items) {
    Sequence& s = sequences_[batch[item.batch_index].seq];
    s.length += item.n;
    s.context_length = item.context_len;
  }
}

}  // namespace sqz
