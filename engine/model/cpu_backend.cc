#include "engine/model/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_set>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace sqz {

// Per-step buffers; R = rows (new tokens) of the step.
struct CpuBackend::Scratch {
  std::vector<float> x, xn;                      // [R][hidden] residual stream, normed copy
  std::vector<float> q, attn, ctx;               // [R][q_dim]
  std::vector<float> k, v;                       // [R][kv_dim]
  std::vector<float> tmp;                        // [R][hidden]
  std::vector<float> gate, up;                   // [R][intermediate]
  std::vector<cpu::AttentionPartial> ctx_stats;  // [R][q_heads]
  std::vector<int32_t> positions;  // [R] absolute positions (context length + own position)
  std::vector<int64_t> row_item;   // [R] index into the batch
  std::vector<int64_t> row_pos;    // [R] own position of the row's token
  std::vector<int64_t> item_row0;  // [batch] first row of each item
  // [batch][kv_heads][blocks] page pointers of the current layer, flattened; offsets per item.
  std::vector<const float*> k_pages, v_pages;
  std::vector<int64_t> item_pages;  // [batch] offset into k_pages / v_pages
  std::vector<float> logit_rows;    // [rows with logits][hidden]
};

namespace {

void Grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
}

}  // namespace

StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const Model& model,
                                                         const CpuBackendOptions& options) {
  SQZ_RETURN_IF_ERROR(model.config.Validate());
  SQZ_RETURN_IF_ERROR(model.weights.Validate(model.config));
  if (options.kv_blocks < 1) {
    return InvalidArgumentError("CpuBackendOptions.kv_blocks must be >= 1, got " +
                                std::to_string(options.kv_blocks));
  }
  return std::unique_ptr<CpuBackend>(new CpuBackend(model, options));
}

CpuBackend::CpuBackend(const Model& model, const CpuBackendOptions& options)
    : model_(model),
      options_(options),
      kv_dim_(model.config.kv_dim()),
      scratch_(std::make_unique<Scratch>()) {
  const ModelConfig& c = model_.config;
  inv_freq_.resize(c.head_dim / 2);
  cpu::RopeInvFreq(c.rope, c.head_dim, inv_freq_.data());
  const int64_t pool = c.layers * options_.kv_blocks * kKvBlockTokens * kv_dim_;
  k_pool_.assign(pool, 0.0f);
  v_pool_.assign(pool, 0.0f);
  free_blocks_.reserve(options_.kv_blocks);
  // Stack: block 0 is handed out first.
  for (int64_t b = options_.kv_blocks - 1; b >= 0; --b)
    free_blocks_.push_back(static_cast<int32_t>(b));
}

CpuBackend::~CpuBackend() = default;

float* CpuBackend::KeyRow(int layer, int32_t block, int64_t slot) {
  return k_pool_.data() + ((layer * options_.kv_blocks + block) * kKvBlockTokens + slot) * kv_dim_;
}

float* CpuBackend::ValueRow(int layer, int32_t block, int64_t slot) {
  return v_pool_.data() + ((layer * options_.kv_blocks + block) * kKvBlockTokens + slot) * kv_dim_;
}

StatusOr<SeqId> CpuBackend::AddSequence() {
  const SeqId id = next_id_++;
  sequences_.emplace(id, Sequence{});
  return id;
}

Status CpuBackend::FreeSequence(SeqId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end())
    return NotFoundError("FreeSequence: unknown sequence " + std::to_string(seq));
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) {
    free_blocks_.push_back(*b);
  }
  sequences_.erase(it);
  return OkStatus();
}

int64_t CpuBackend::SequenceLength(SeqId seq) const {
  auto it = sequences_.find(seq);
  return it == sequences_.end() ? -1 : it->second.length;
}

KvPoolStats CpuBackend::Stats() const {
  KvPoolStats s;
  s.total_blocks = options_.kv_blocks;
  s.free_blocks = static_cast<int64_t>(free_blocks_.size());
  s.used_blocks = s.total_blocks - s.free_blocks;
  s.sequences = static_cast<int64_t>(sequences_.size());
  return s;
}

Status CpuBackend::ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end())
    return NotFoundError("ReadKv: unknown sequence " + std::to_string(seq));
  if (layer < 0 || layer >= model_.config.layers) {
    return InvalidArgumentError("ReadKv: layer " + std::to_string(layer) + " outside [0, " +
                                std::to_string(model_.config.layers) + ")");
  }
  const Sequence& s = it->second;
  if (begin < 0 || n < 0 || begin + n > s.length) {
    return OutOfRangeError("ReadKv: tokens [" + std::to_string(begin) + ", " +
                           std::to_string(begin + n) + ") outside the " + std::to_string(s.length) +
                           " cached tokens of sequence " + std::to_string(seq));
  }
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = begin + t;
    const int32_t block = s.blocks[p / kKvBlockTokens];
    std::memcpy(k + t * kv_dim_, KeyRow(layer, block, p % kKvBlockTokens), kv_dim_ * 4);
    std::memcpy(v + t * kv_dim_, ValueRow(layer, block, p % kKvBlockTokens), kv_dim_ * 4);
  }
  return OkStatus();
}

Status CpuBackend::Forward(std::span<const StepInput> batch, float* logits) {
  const ModelConfig& c = model_.config;
  // ---- Validate everything before changing any state.
  std::unordered_set<SeqId> seen;
  int64_t rows = 0, needed_blocks = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    const std::string where =
        "Forward: batch item " + std::to_string(i) + " (sequence " + std::to_string(in.seq) + ")";
    auto it = sequences_.find(in.seq);
    if (it == sequences_.end()) return InvalidArgumentError(where + ": unknown sequence");
    if (!seen.insert(in.seq).second) {
      return InvalidArgumentError(where + ": sequence appears twice in one step");
    }
    if (in.tokens.empty()) return InvalidArgumentError(where + ": no tokens");
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      if (in.tokens[t] < 0 || in.tokens[t] >= c.vocab) {
        return InvalidArgumentError(
            where + ": token id " + std::to_string(in.tokens[t]) + " at index " +
            std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(c.vocab) + ")");
      }
    }
    const Sequence& s = it->second;
    const int64_t ctx_len = in.context ? in.context->length() : 0;
    if (s.context_length >= 0 && s.context_length != ctx_len) {
      return InvalidArgumentError(where + ": context length " + std::to_string(ctx_len) +
                                  " differs from the " + std::to_string(s.context_length) +
                                  " of its earlier steps");
    }
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    if (ctx_len + s.length + n > c.max_positions) {
      return OutOfRangeError(where + ": positions up to " + std::to_string(ctx_len + s.length + n) +
                             " exceed max_position_embeddings " + std::to_string(c.max_positions));
    }
    const int64_t blocks_after = (s.length + n + kKvBlockTokens - 1) / kKvBlockTokens;
    needed_blocks += blocks_after - static_cast<int64_t>(s.blocks.size());
    rows += n;
  }
  if (needed_blocks > static_cast<int64_t>(free_blocks_.size())) {
    return ResourceExhaustedError("Forward: the step needs " + std::to_string(needed_blocks) +
                                  " new KV blocks but only " + std::to_string(free_blocks_.size()) +
                                  " of " + std::to_string(options_.kv_blocks) + " are free");
  }
  if (batch.empty()) return OkStatus();

  // ---- Take blocks and lay out the rows.
  Scratch& sc = *scratch_;
  sc.positions.resize(rows);
  sc.row_item.resize(rows);
  sc.row_pos.resize(rows);
  sc.item_row0.resize(batch.size());
  int64_t r = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    Sequence& s = sequences_[in.seq];
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    while (static_cast<int64_t>(s.blocks.size()) * kKvBlockTokens < s.length + n) {
      s.blocks.push_back(free_blocks_.back());
      free_blocks_.pop_back();
    }
    s.context_length = in.context ? in.context->length() : 0;
    sc.item_row0[i] = r;
    for (int64_t t = 0; t < n; ++t, ++r) {
      sc.row_item[r] = static_cast<int64_t>(i);
      sc.row_pos[r] = s.length + t;
      sc.positions[r] = static_cast<int32_t>(s.context_length + s.length + t);
    }
  }
  Grow(sc.x, rows * c.hidden);
  Grow(sc.xn, rows * c.hidden);
  Grow(sc.tmp, rows * c.hidden);
  Grow(sc.q, rows * c.q_dim());
  Grow(sc.attn, rows * c.q_dim());
  Grow(sc.ctx, rows * c.q_dim());
  Grow(sc.k, rows * kv_dim_);
  Grow(sc.v, rows * kv_dim_);
  Grow(sc.gate, rows * c.intermediate);
  Grow(sc.up, rows * c.intermediate);
  if (static_cast<int64_t>(sc.ctx_stats.size()) < rows * c.q_heads) {
    sc.ctx_stats.resize(rows * c.q_heads);
  }
  r = 0;
  for (const StepInput& in : batch) {
    for (int32_t tok : in.tokens) {
      std::memcpy(sc.x.data() + r * c.hidden, model_.weights.embedding.data() + tok * c.hidden,
                  c.hidden * 4);
      ++r;
    }
  }

  // ---- Layers.
  for (int layer = 0; layer < c.layers; ++layer) RunLayer(layer, batch);
  for (const StepInput& in : batch) sequences_[in.seq].length += in.tokens.size();

  // ---- Logits.
  if (logits == nullptr) return OkStatus();
  int64_t out_rows = 0;
  for (const StepInput& in : batch) out_rows += in.all_logits ? in.tokens.size() : 1;
  Grow(sc.logit_rows, out_rows * c.hidden);
  int64_t o = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = batch[i].tokens.size();
    const int64_t first = batch[i].all_logits ? 0 : n - 1;
    for (int64_t t = first; t < n; ++t, ++o) {
      std::memcpy(sc.logit_rows.data() + o * c.hidden,
                  sc.x.data() + (sc.item_row0[i] + t) * c.hidden, c.hidden * 4);
    }
  }
  cpu::RmsNorm(sc.logit_rows.data(), model_.weights.final_norm.data(), out_rows, c.hidden,
               c.rms_eps, sc.logit_rows.data());
  cpu::MatMulTransB(sc.logit_rows.data(), model_.weights.LmHead(), nullptr, out_rows, c.vocab,
                    c.hidden, logits);
  return OkStatus();
}

void CpuBackend::RunLayer(int layer, std::span<const StepInput> batch) {
  const ModelConfig& c = model_.config;
  const LayerWeights& w = model_.weights.layers[layer];
  Scratch& sc = *scratch_;
  const int64_t rows = static_cast<int64_t>(sc.positions.size());
  const int64_t d = c.head_dim, q_dim = c.q_dim(), hidden = c.hidden;
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

  // Attention block.
  cpu::RmsNorm(sc.x.data(), w.attn_norm.data(), rows, hidden, c.rms_eps, sc.xn.data());
  cpu::MatMulTransB(sc.xn.data(), w.wq.data(), bias(w.bq), rows, q_dim, hidden, sc.q.data());
  cpu::MatMulTransB(sc.xn.data(), w.wk.data(), bias(w.bk), rows, kv_dim_, hidden, sc.k.data());
  cpu::MatMulTransB(sc.xn.data(), w.wv.data(), bias(w.bv), rows, kv_dim_, hidden, sc.v.data());
  cpu::ApplyRope(sc.q.data(), sc.positions.data(), rows, c.q_heads, d, inv_freq_.data());
  cpu::ApplyRope(sc.k.data(), sc.positions.data(), rows, c.kv_heads, d, inv_freq_.data());
  for (int64_t r = 0; r < rows; ++r) {
    const Sequence& s = sequences_[batch[sc.row_item[r]].seq];
    const int64_t p = sc.row_pos[r];
    const int32_t block = s.blocks[p / kKvBlockTokens];
    std::memcpy(KeyRow(layer, block, p % kKvBlockTokens), sc.k.data() + r * kv_dim_, kv_dim_ * 4);
    std::memcpy(ValueRow(layer, block, p % kKvBlockTokens), sc.v.data() + r * kv_dim_, kv_dim_ * 4);
  }
  // Page tables of this layer, per (item, kv head), and the context partials.
  sc.item_pages.resize(batch.size());
  sc.k_pages.clear();
  sc.v_pages.clear();
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    const Sequence& s = sequences_[in.seq];
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    sc.item_pages[i] = static_cast<int64_t>(sc.k_pages.size());
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      for (int32_t block : s.blocks) {
        sc.k_pages.push_back(KeyRow(layer, block, 0) + h * d);
        sc.v_pages.push_back(ValueRow(layer, block, 0) + h * d);
      }
    }
    const int64_t row0 = sc.item_row0[i];
    if (in.q_out) {
      std::memcpy(in.q_out + layer * n * q_dim, sc.q.data() + row0 * q_dim, n * q_dim * 4);
    }
    if (in.context) {
      in.context->Attend(layer, sc.q.data() + row0 * q_dim, n, sc.row_pos[row0],
                         sc.ctx.data() + row0 * q_dim, sc.ctx_stats.data() + row0 * c.q_heads);
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t group = c.group_size();
  const int64_t work = rows * c.q_heads;
  int64_t keys = 0;  // attention cost estimate: keys visited per head
  for (int64_t r = 0; r < rows; ++r) keys += sc.row_pos[r] + 1;
#pragma omp parallel for schedule(dynamic, 4) if (keys * c.q_heads * d >= (int64_t{1} << 20))
  for (int64_t job = 0; job < work; ++job) {
    thread_local std::vector<float> scores;
    const int64_t r = job / c.q_heads, h = job % c.q_heads;
    const int64_t item = sc.row_item[r];
    const Sequence& s = sequences_.at(batch[item].seq);
    const int64_t n_keys = sc.row_pos[r] + 1;
    if (static_cast<int64_t>(scores.size()) < n_keys) scores.resize(n_keys);
    const int64_t page0 = sc.item_pages[item] + (h / group) * s.blocks.size();
    float* out = sc.attn.data() + r * q_dim + h * d;
    cpu::AttentionPartial st;
    cpu::PagedAttention(sc.q.data() + r * q_dim + h * d, sc.k_pages.data() + page0,
                        sc.v_pages.data() + page0, kKvBlockTokens, kv_dim_, n_keys, d, scale,
                        scores.data(), out, &st);
    if (batch[item].context) {
      // Context partial first, then the own tokens merged into it: a fixed order.
      float* ctx_o = sc.ctx.data() + r * q_dim + h * d;
      cpu::AttentionPartial ctx_st = sc.ctx_stats[r * c.q_heads + h];
      cpu::MergePartial(ctx_o, &ctx_st, out, st, d);
      std::memcpy(out, ctx_o, d * 4);
    }
  }
  cpu::MatMulTransB(sc.attn.data(), w.wo.data(), nullptr, rows, hidden, q_dim, sc.tmp.data());
  cpu::AddInPlace(sc.x.data(), sc.tmp.data(), rows * hidden);

  // MLP block.
  cpu::RmsNorm(sc.x.data(), w.ffn_norm.data(), rows, hidden, c.rms_eps, sc.xn.data());
  cpu::MatMulTransB(sc.xn.data(), w.w_gate.data(), nullptr, rows, c.intermediate, hidden,
                    sc.gate.data());
  cpu::MatMulTransB(sc.xn.data(), w.w_up.data(), nullptr, rows, c.intermediate, hidden,
                    sc.up.data());
  cpu::SiluMul(sc.gate.data(), sc.up.data(), rows * c.intermediate, sc.gate.data());
  cpu::MatMulTransB(sc.gate.data(), w.w_down.data(), nullptr, rows, hidden, c.intermediate,
                    sc.tmp.data());
  cpu::AddInPlace(sc.x.data(), sc.tmp.data(), rows * hidden);
}

}  // namespace sqz
