// Test helpers shared by the selection and sparse attention tests (squeeze_select_test.cc,
// sparse_prefill_select_test.cc, sparse_decode_test.cc, sparse_prefill_attention_test.cc): seeded
// random contexts with a centroid index (sink | clustered body | window, as squeeze_select.h lays
// them out), their host copies for the CPU references, and device copies with a SqueezeLayerView.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "engine/squeeze/selection.h"
#include "engine/squeeze/snapshot.h"
#include "kernels/cuda/squeeze_select.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda::testing {

// One context (one layer): per kv head a HeadIndex (centroids, counts, offsets, coarse level; the
// KV fields stay empty) plus K/V rows [hkv][n_tokens][d]. All values are bf16-representable, so
// host and device see the same numbers.
struct HostContext {
  int hkv = 0, d = 0;
  int32_t sink = 0, window = 0, body = 0, k = 0, k1 = 0;
  int32_t largest = 0;  // largest cluster
  std::vector<HeadIndex> heads;
  std::vector<float> keys, values;  // [hkv][n_tokens][d]
  int32_t n_tokens() const { return sink + body + window; }
};

// k clusters of 1 .. max_size members per head; k1 coarse groups (0: none) over a random
// assignment of fine clusters (every group non-empty); centroids normal(0, spread).
inline HostContext MakeContext(int hkv, int d, int32_t k, int32_t k1, int32_t sink, int32_t window,
                               uint32_t seed, int32_t max_size = 40, float spread = 2.0f,
                               bool with_kv = true) {
  HostContext c;
  c.hkv = hkv;
  c.d = d;
  c.sink = sink;
  c.window = window;
  c.k = k;
  c.k1 = k1;
  std::mt19937 rng(seed);
  // Cluster sizes are shared by the heads' body length: draw one body length, then split it per
  // head differently.
  std::uniform_int_distribution<int32_t> size_dist(1, max_size);
  int32_t body = 0;
  std::vector<int32_t> base_sizes(k);
  for (auto& s : base_sizes) body += (s = size_dist(rng));
  c.body = body;
  for (int h = 0; h < hkv; ++h) {
    HeadIndex idx;
    std::vector<int32_t> sizes = base_sizes;
    std::shuffle(sizes.begin(), sizes.end(), rng);  // same body, different cluster sizes per head
    idx.counts = sizes;
    idx.offsets.assign(k + 1, 0);
    for (int32_t i = 0; i < k; ++i) idx.offsets[i + 1] = idx.offsets[i] + sizes[i];
    c.largest = std::max(c.largest, *std::max_element(sizes.begin(), sizes.end()));
    idx.centroids = RoundBf16(RandomFloats(size_t(k) * d, seed * 131u + h * 7u + 1u, spread));
    if (k1 > 0) {
      std::vector<int32_t> parent(k);
      for (int32_t i = 0; i < k; ++i) parent[i] = i < k1 ? i : int32_t(rng() % k1);
      std::shuffle(parent.begin(), parent.end(), rng);
      idx.coarse_offsets.assign(k1 + 1, 0);
      for (int32_t i = 0; i < k; ++i) ++idx.coarse_offsets[parent[i] + 1];
      for (int32_t j = 0; j < k1; ++j) idx.coarse_offsets[j + 1] += idx.coarse_offsets[j];
      idx.coarse_members.assign(k, 0);
      std::vector<int32_t> fill(idx.coarse_offsets.begin(), idx.coarse_offsets.end() - 1);
      for (int32_t i = 0; i < k; ++i) idx.coarse_members[fill[parent[i]]++] = i;
      idx.coarse_centroids =
          RoundBf16(RandomFloats(size_t(k1) * d, seed * 977u + h * 13u + 5u, spread));
    }
    c.heads.push_back(std::move(idx));
  }
  if (with_kv) {
    const size_t n = size_t(hkv) * c.n_tokens() * d;
    c.keys = RoundBf16(RandomFloats(n, seed * 31u + 3u, 1.0f));
    c.values = RoundBf16(RandomFloats(n, seed * 37u + 4u, 1.0f));
  }
  return c;
}

// Device copy of a HostContext; View() describes it for SqueezeSelect.
struct DeviceContext {
  explicit DeviceContext(const HostContext& c) {
    std::vector<float> cent, coarse_cent;
    std::vector<int32_t> counts, offsets, coarse_offsets, members;
    for (const HeadIndex& h : c.heads) {
      cent.insert(cent.end(), h.centroids.begin(), h.centroids.end());
      counts.insert(counts.end(), h.counts.begin(), h.counts.end());
      offsets.insert(offsets.end(), h.offsets.begin(), h.offsets.end());
      coarse_cent.insert(coarse_cent.end(), h.coarse_centroids.begin(), h.coarse_centroids.end());
      coarse_offsets.insert(coarse_offsets.end(), h.coarse_offsets.begin(), h.coarse_offsets.end());
      members.insert(members.end(), h.coarse_members.begin(), h.coarse_members.end());
    }
    auto bf = [](const std::vector<float>& x) {
      return std::make_unique<DeviceBuffer<__nv_bfloat16>>(
          ToBf16(x.empty() ? std::vector<float>{0} : x));
    };
    auto ints = [](const std::vector<int32_t>& x) {
      return std::make_unique<DeviceBuffer<int32_t>>(x.empty() ? std::vector<int32_t>{0} : x);
    };
    centroids = bf(cent);
    coarse_centroids = bf(coarse_cent);
    this->counts = ints(counts);
    this->offsets = ints(offsets);
    this->coarse_offsets = ints(coarse_offsets);
    coarse_members = ints(members);
    keys = bf(c.keys);
    values = bf(c.values);
    view.n_tokens = c.n_tokens();
    view.sink_len = c.sink;
    view.window_len = c.window;
    view.num_clusters = c.k;
    view.num_coarse = c.k1;
    view.centroids = centroids->get();
    view.counts = this->counts->get();
    view.offsets = this->offsets->get();
    view.coarse_centroids = c.k1 > 0 ? coarse_centroids->get() : nullptr;
    view.coarse_offsets = c.k1 > 0 ? this->coarse_offsets->get() : nullptr;
    view.coarse_members = c.k1 > 0 ? coarse_members->get() : nullptr;
  }
  std::unique_ptr<DeviceBuffer<__nv_bfloat16>> centroids, coarse_centroids, keys, values;
  std::unique_ptr<DeviceBuffer<int32_t>> counts, offsets, coarse_offsets, coarse_members;
  SqueezeLayerView view;
};

// Rows of one (request, kv head) named by its segment list, in list order; false when the list is
// malformed (ends not increasing, rows out of [0, n_tokens), or the last end != selected_len).
inline bool ExpandSegments(const int2* segs, int32_t num_segments, int32_t selected_len,
                           int32_t n_tokens, std::vector<int32_t>* rows) {
  rows->clear();
  int32_t begin = 0;
  for (int32_t s = 0; s < num_segments; ++s) {
    const int32_t end = segs[s].x, delta = segs[s].y;
    if (end <= begin) return false;
    for (int32_t j = begin; j < end; ++j) {
      const int32_t row = j + delta;
      if (row < 0 || row >= n_tokens) return false;
      rows->push_back(row);
    }
    begin = end;
  }
  return begin == selected_len;
}

// Checks one (request or block, kv head)'s selection as the device wrote it against the context's
// layout -- a well-formed list, each row at most once, rows ascending, sink and window all there,
// whole clusters only, body_selected and selected_len consistent -- and returns the selected
// cluster ids, their keys in *keys.
inline std::set<int32_t> CheckedSelection(const HostContext& c, int h, const int2* segs,
                                          int32_t num_segments, int32_t max_segments,
                                          int32_t selected_len, int32_t body_selected,
                                          int64_t* keys) {
  const HeadIndex& idx = c.heads[h];
  std::vector<int32_t> rows;
  REQUIRE(num_segments <= max_segments);
  REQUIRE(ExpandSegments(segs, num_segments, selected_len, c.n_tokens(), &rows));
  std::vector<char> mask(c.n_tokens(), 0);
  for (int32_t row : rows) {
    REQUIRE(mask[row] == 0);
    mask[row] = 1;
  }
  for (int32_t i = 0; i < c.sink; ++i) REQUIRE(mask[i] == 1);
  for (int32_t i = c.sink + c.body; i < c.n_tokens(); ++i) REQUIRE(mask[i] == 1);
  REQUIRE(std::is_sorted(rows.begin(), rows.end()));  // sink, clusters by id, window
  std::set<int32_t> got;
  *keys = 0;
  for (int32_t cl = 0; cl < c.k; ++cl) {
    const int32_t first = c.sink + idx.offsets[cl], last = c.sink + idx.offsets[cl + 1];
    for (int32_t i = first; i < last; ++i) REQUIRE(mask[i] == mask[first]);
    if (mask[first]) {
      got.insert(cl);
      *keys += idx.counts[cl];
    }
  }
  REQUIRE(body_selected == *keys);
  REQUIRE(selected_len == *keys + c.sink + c.window);
  return got;
}

// Compares a device selection (got, got_keys) with the CPU's (want) on the same inputs. Equal
// sets must also count the same keys. Otherwise, ties aside: every differing cluster's p (from
// probabilities(), the CPU's ClusterProbabilities on the same query) must lie within rounding of
// the cut -- the smallest p the CPU took under the budget policy, or `value` (the threshold).
// Returns the number of differing clusters.
inline int DifferingAtTiesOnly(const std::set<int32_t>& got, int64_t got_keys,
                               const SelectionResult& want, SqueezePolicy policy, float value,
                               const std::function<std::vector<float>()>& probabilities) {
  const std::set<int32_t> want_set(want.clusters.begin(), want.clusters.end());
  std::vector<int32_t> diff;
  std::set_symmetric_difference(got.begin(), got.end(), want_set.begin(), want_set.end(),
                                std::back_inserter(diff));
  if (diff.empty()) {
    REQUIRE(got_keys == want.selected_keys);
    return 0;
  }
  INFO("clusters differing from the CPU: " << diff.size());
  const std::vector<float> pr = probabilities();
  float cut = value;
  if (policy == SqueezePolicy::kBudget) {
    cut = INFINITY;
    for (int32_t cl : want.clusters) cut = std::min(cut, pr[cl]);
  }
  for (int32_t cl : diff) {
    INFO("cluster " << cl << " p=" << pr[cl] << " cut=" << cut);
    REQUIRE(std::fabs(pr[cl] - cut) <= 1e-4f * cut + 1e-30f);
  }
  return static_cast<int>(diff.size());
}

// A threshold between two adjacent estimates a quarter of the way down (descending) of the
// probabilities pr of one head's clusters, so about a quarter of them pass it.
inline float ThresholdAQuarterDown(std::vector<float> pr) {
  std::sort(pr.begin(), pr.end(), std::greater<float>());
  const size_t at = pr.size() / 4;
  return at + 1 < pr.size() ? 0.5f * (pr[at] + pr[at + 1]) : 0.5f * pr[0];
}

// Gives clusters c = 0, every, 2 * every, ... of every head of c the centroid of cluster 0 (1: all
// of them), so their scores and p tie exactly and the budget cut falls among equal p.
inline void TieCentroids(HostContext* c, int every) {
  for (HeadIndex& idx : c->heads) {
    for (int32_t cl = every; cl < c->k; cl += every) {
      std::copy(idx.centroids.begin(), idx.centroids.begin() + c->d,
                idx.centroids.begin() + size_t(cl) * c->d);
    }
  }
}

// One SqueezeSelect call's outputs, downloaded ([units] counts, [units][max_segments] segments).
struct SelectionOutputs {
  std::vector<int2> segments;
  std::vector<int32_t> num_segments, selected_len, body_selected;
};

// Runs SqueezeSelect(p) with plan.select_ctas = ctas (1: the single-block kernel, else a cluster
// of that many CTAs per (request, kv head)) into fresh (poisoned) outputs, eagerly or through a
// captured CUDA graph, and downloads them. Empty outputs (and a warning) where the device cannot
// schedule clusters of 16 CTAs (UNIMPLEMENTED).
inline SelectionOutputs RunSqueezeSelect(const SqueezeSelectParams& p, SqueezeSelectPlan plan,
                                         int ctas, const DeviceBuffer<char>& ws,
                                         bool graph = false) {
  if (ctas > 8) {
    plan.select_ctas = ctas;
    DeviceBuffer<int2> segs(size_t(p.batch) * p.n_kv_heads * plan.max_segments);
    DeviceBuffer<int32_t> counts(size_t(p.batch) * p.n_kv_heads);
    const SqueezeSelection probe{segs.get(), counts.get(), counts.get(), nullptr};
    const Status s = SqueezeSelect(p, plan, probe, ws.get(), ws.size(), nullptr);
    SQZ_TEST_CUDA(cudaDeviceSynchronize());
    if (s.code() == StatusCode::kUnimplemented) {
      WARN("clusters of " << ctas << " CTAs not compared: " << s.ToString());
      return SelectionOutputs{};
    }
  }
  plan.select_ctas = ctas;
  INFO("select_ctas " << ctas << (graph ? " (graph)" : ""));
  const size_t units = size_t(p.batch) * p.n_kv_heads;
  DeviceBuffer<int2> segs(units * plan.max_segments);
  DeviceBuffer<int32_t> nseg(units), sel_len(units), body_sel(units);
  const SqueezeSelection out{segs.get(), nseg.get(), sel_len.get(), body_sel.get()};
  if (graph) {
    cudaStream_t stream;
    SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t g_raw;
    SQZ_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const Status s = SqueezeSelect(p, plan, out, ws.get(), ws.size(), stream);
    SQZ_TEST_CUDA(cudaStreamEndCapture(stream, &g_raw));
    INFO(s.ToString());
    REQUIRE(s.ok());
    cudaGraphExec_t exec;
    SQZ_TEST_CUDA(cudaGraphInstantiate(&exec, g_raw, 0));
    SQZ_TEST_CUDA(cudaGraphLaunch(exec, stream));
    SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
    SQZ_TEST_CUDA(cudaGraphExecDestroy(exec));
    SQZ_TEST_CUDA(cudaGraphDestroy(g_raw));
    SQZ_TEST_CUDA(cudaStreamDestroy(stream));
  } else {
    const Status s = SqueezeSelect(p, plan, out, ws.get(), ws.size(), nullptr);
    INFO(s.ToString());
    REQUIRE(s.ok());
  }
  SQZ_TEST_CUDA(cudaGetLastError());
  return SelectionOutputs{segs.Download(), nseg.Download(), sel_len.Download(),
                          body_sel.Download()};
}

// The cluster sizes the selection of p can run with (SqueezeClusterSelectFits).
inline std::vector<int> ClusterSizesFor(const SqueezeSelectParams& p) {
  std::vector<int> sizes;
  for (int ctas : {2, 4, 8, 16}) {
    if (SqueezeClusterSelectFits(p, ctas)) sizes.push_back(ctas);
  }
  return sizes;
}

// The cluster path must reproduce the single-block kernel exactly: counts, and every segment
// the counts name.
inline void RequireSameSelection(const SelectionOutputs& want, const SelectionOutputs& got,
                                 int32_t max_segments) {
  if (got.num_segments.empty() && got.selected_len.empty()) return;  // not run (see above)
  REQUIRE(got.num_segments.size() == want.num_segments.size());
  for (size_t u = 0; u < want.num_segments.size(); ++u) {
    INFO("(request, kv head) " << u);
    REQUIRE(got.num_segments[u] == want.num_segments[u]);
    REQUIRE(got.selected_len[u] == want.selected_len[u]);
    REQUIRE(got.body_selected[u] == want.body_selected[u]);
    for (int32_t s = 0; s < std::min(want.num_segments[u], max_segments); ++s) {
      const int2 a = want.segments[u * max_segments + s], b = got.segments[u * max_segments + s];
      INFO("segment " << s);
      REQUIRE(b.x == a.x);
      REQUIRE(b.y == a.y);
    }
  }
}

}  // namespace sqz::cuda::testing
