// ModelIdentity: the fingerprint of the model a context's KV cache was computed with (DESIGN.md,
// "Storage"). Each context record stores one; when the server loads another model, contexts whose
// identity differs are stale (their KV belongs to another model) and are re-ingested from their
// stored tokens (ContextStore::MarkStale).
//
// Four parts, so that a mismatch can say what changed:
//   config_summary  human-readable summary of the architecture and its hyper-parameters
//   tensors_digest  XXH3-64 over every tensor's name, dtype and shape, in a fixed order
//   weights_digest  a 64-bit digest of the weights' bytes
//   format_version  version of this recipe; identities of different versions never compare equal
// Hash() folds all four into one stable 64-bit value (the same on every run and machine).
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/weights.h"

namespace sqz {

struct ModelIdentity {
  static constexpr int32_t kFormatVersion = 1;

  std::string config_summary;
  uint64_t tensors_digest = 0;
  uint64_t weights_digest = 0;
  int32_t format_version = kFormatVersion;

  // Stable 64-bit digest of all four fields: XXH3-64 of their canonical encoding (little-endian
  // u64 fields, strings prefixed with their u64 length). Pinned by a test.
  uint64_t Hash() const;
  // "0123456789abcdef" (16 lower-case hex digits of Hash()).
  std::string HashHex() const;
  bool operator==(const ModelIdentity&) const = default;
};

// One line saying which parts of `current` differ from `stored` ("" when equal), for logs and the
// error message of a stale context, e.g. "config differs (llama L=2 ... vs llama L=4 ...); weights
// differ".
std::string DescribeIdentityChange(const ModelIdentity& stored, const ModelIdentity& current);

// A tensor as the checkpoint names it, for tensors_digest.
struct TensorSignature {
  std::string name;            // e.g. "model.layers.0.self_attn.q_proj.weight"
  std::string dtype;           // e.g. "bf16"
  std::vector<int64_t> shape;  // row-major, outermost first
};
// XXH3-64 over the signatures in the given order (the order is part of the digest).
uint64_t DigestTensors(const std::vector<TensorSignature>& tensors);

// The identity of a loaded model: the summary of its config, the digest of its tensors' Hugging
// Face names, checkpoint dtype (config.torch_dtype) and shapes, and `weights_digest` when given
// (e.g. the engine's load-time fingerprint, to avoid hashing the weights twice), otherwise XXH3-64
// over every weight's bytes (O(parameters); ~1 s per GB).
ModelIdentity IdentifyModel(const Model& model, std::optional<uint64_t> weights_digest = {});

}  // namespace sqz
