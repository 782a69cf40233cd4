// sqz-fidelity: how close Squeezed Attention stays to dense attention (ALGORITHM.md, "What we
// measure"), printed as Markdown tables over KV budgets, centroid fractions and flat vs
// hierarchical lookup.
//
//   sqz-fidelity synthetic [--n 32768] [--d 128] [--components 256] [--queries 64] [--seed 1]
//       [--budgets 0.05,0.125,0.25,0.5] [--centroid-fractions 0.05] [--kv-heads 1] [--q-heads 1]
//     Model-free: keys from a Gaussian mixture, queries near some mixture means. Prints clustering
//     time, attention-mass recall, relative output L2 error and the share of keys read.
//
//   sqz-fidelity model --model DIR --context-file FILE [--query TEXT]... [--generate 64]
//       [--budgets ...] [--centroid-fractions ...]
//     A Hugging Face model directory (with tokenizer.json): ingests the context, then per query
//     prints per-layer attention metrics and end-to-end greedy-token agreement and logit KL
//     divergence against dense decoding (teacher-forced on the dense tokens), plus the length of
//     the free-running greedy prefix that matches dense.
// Thread safety: a function of its arguments; writes only to the given streams.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace sqz::tools {

// Returns the process exit code: 0 on success, 2 for bad arguments, 1 for other errors (with a
// message on err).
int RunFidelity(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace sqz::tools
