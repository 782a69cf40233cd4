#include "tools/fidelity/fidelity_cli.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/squeeze/fidelity_metrics.h"
#include "engine/squeeze/ingest.h"
#include "engine/squeeze/synthetic.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// "--name value" flags (repeatable) after one positional mode word.
struct Args {
  std::string mode;
  std::map<std::string, std::vector<std::string>> flags;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Str(const std::string& name, const std::string& def) const {
    return Has(name) ? flags.at(name).back() : def;
  }
};

StatusOr<Args> Parse(const std::vector<std::string>& args, const std::vector<std::string>& known) {
  Args a;
  if (args.empty())
    return InvalidArgumentError("usage: sqz-fidelity synthetic|model [--flag value]...");
  a.mode = args[0];
  for (size_t i = 1; i < args.size(); i += 2) {
    const std::string& f = args[i];
    if (f.rfind("--", 0) != 0) return InvalidArgumentError("expected a --flag, got '" + f + "'");
    const std::string name = f.substr(2);
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return InvalidArgumentError("unknown flag --" + name + " for mode " + a.mode);
    }
    if (i + 1 >= args.size()) return InvalidArgumentError("flag --" + name + " needs a value");
    a.flags[name].push_back(args[i + 1]);
  }
  return a;
}

StatusOr<double> ToDouble(const std::string& name, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v)) {
    return InvalidArgumentError("--" + name + ": '" + s + "' is not a number");
  }
  return v;
}

StatusOr<std::vector<double>> List(const Args& a, const std::string& name, const std::string& def) {
  std::vector<double> out;
  std::stringstream ss(a.Str(name, def));
  std::string item;
  while (std::getline(ss, item, ',')) {
    SQZ_ASSIGN_OR_RETURN(double v, ToDouble(name, item));
    out.push_back(v);
  }
  if (out.empty()) return InvalidArgumentError("--" + name + " is empty");
  return out;
}

StatusOr<int64_t> Int(const Args& a, const std::string& name, int64_t def, int64_t min) {
  if (!a.Has(name)) return def;
  SQZ_ASSIGN_OR_RETURN(double v, ToDouble(name, a.Str(name, "")));
  if (v != std::floor(v) || v < static_cast<double>(min)) {
    return InvalidArgumentError("--" + name + " must be an integer >= " + std::to_string(min));
  }
  return static_cast<int64_t>(v);
}

std::string Fmt(double v, int digits = 4) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

// Coarse fraction that keeps the default ratio (1% coarse for 5% fine).
SqueezeOptions OptionsFor(double centroid_fraction) {
  SqueezeOptions o;
  o.centroid_fraction = centroid_fraction;
  o.coarse_fraction = centroid_fraction / 5.0;
  return o;
}

// Attention metrics averaged over layers. q: [layers][n][q_heads][d].
StatusOr<AttentionFidelity> LayerAverage(const ContextSnapshot& snap, const std::vector<float>& q,
                                         int64_t n, const AttentionOptions& ao) {
  AttentionFidelity sum;
  sum.min_mass_recall = 1.0;
  const SnapshotDims& dm = snap.dims;
  const size_t per_layer = static_cast<size_t>(n) * dm.q_heads * dm.head_dim;
  for (int l = 0; l < dm.layers; ++l) {
    SQZ_ASSIGN_OR_RETURN(AttentionFidelity f,
                         MeasureAttentionFidelity(snap, l, q.data() + l * per_layer, n, 0, ao));
    sum.mass_recall += f.mass_recall / dm.layers;
    sum.min_mass_recall = std::min(sum.min_mass_recall, f.min_mass_recall);
    sum.rel_l2_error += f.rel_l2_error / dm.layers;
    sum.keys_read_share += f.keys_read_share / dm.layers;
    sum.body_share += f.body_share / dm.layers;
  }
  return sum;
}

const char* kAttentionHeader =
    "| centroids | lookup | KV budget | keys read (incl. centroids) | body keys read | mass recall "
    "| min recall | rel. L2 error |\n|---|---|---|---|---|---|---|---|\n";

std::string AttentionRow(double cf, bool hier, const std::string& budget,
                         const AttentionFidelity& f) {
  return "| " + Fmt(cf, 3) + " | " + (hier ? "hierarchical" : "flat") + " | " + budget + " | " +
         Fmt(f.keys_read_share) + " | " + Fmt(f.body_share) + " | " + Fmt(f.mass_recall) + " | " +
         Fmt(f.min_mass_recall) + " | " + Fmt(f.rel_l2_error) + " |\n";
}

Status Synthetic(const Args& a, std::ostream& out) {
  SyntheticSpec spec;
  SQZ_ASSIGN_OR_RETURN(spec.n_tokens, Int(a, "n", 32768, 1));
  SQZ_ASSIGN_OR_RETURN(int64_t d, Int(a, "d", 128, 1));
  SQZ_ASSIGN_OR_RETURN(spec.mixture_components, Int(a, "components", 256, 1));
  SQZ_ASSIGN_OR_RETURN(int64_t kvh, Int(a, "kv-heads", 1, 1));
  SQZ_ASSIGN_OR_RETURN(int64_t qh, Int(a, "q-heads", kvh, 1));
  SQZ_ASSIGN_OR_RETURN(int64_t nq, Int(a, "queries", 64, 1));
  SQZ_ASSIGN_OR_RETURN(int64_t seed, Int(a, "seed", 1, 0));
  SQZ_ASSIGN_OR_RETURN(std::vector<double> budgets, List(a, "budgets", "0.05,0.125,0.25,0.5"));
  SQZ_ASSIGN_OR_RETURN(std::vector<double> cfs, List(a, "centroid-fractions", "0.05"));
  if (qh % kvh != 0) return InvalidArgumentError("--q-heads must be a multiple of --kv-heads");
  spec.head_dim = static_cast<int32_t>(d);
  spec.kv_heads = static_cast<int32_t>(kvh);
  spec.q_heads = static_cast<int32_t>(qh);
  spec.seed = static_cast<uint64_t>(seed);
  spec.window_len = WindowLength(spec.n_tokens, SqueezeOptions{});
  std::vector<float> queries;
  const CapturedContext captured = SyntheticContext(spec, nq, &queries);
  out << "Synthetic context: N = " << spec.n_tokens << ", d = " << d << ", kv heads " << kvh
      << ", q heads " << qh << ", " << spec.mixture_components << " mixture components, " << nq
      << " queries near mixture means (per-token selection, GQA max).\n\n";
  std::string table = kAttentionHeader;
  for (double cf : cfs) {
    const SqueezeOptions so = OptionsFor(cf);
    const auto t0 = Clock::now();
    SQZ_ASSIGN_OR_RETURN(ContextSnapshot snap, BuildSnapshot(captured, so));
    const double secs = Seconds(t0);
    out << "- centroid fraction " << cf << ": k = " << snap.heads[0].counts.size() << " fine, k1 = "
        << (snap.heads[0].coarse_offsets.empty() ? 0 : snap.heads[0].coarse_offsets.size() - 1)
        << " coarse clusters per head; snapshot build (k-means, layout, calibration) "
        << Fmt(secs, 2) << " s for " << kvh << " head(s)\n";
    for (double b : budgets) {
      for (bool hier : {false, true}) {
        AttentionOptions ao;
        ao.kv_budget = b;
        ao.block_size = 1;
        ao.hierarchical = hier;
        SQZ_ASSIGN_OR_RETURN(AttentionFidelity f, LayerAverage(snap, queries, nq, ao));
        table += AttentionRow(cf, hier, Fmt(b, 3), f);
      }
    }
    for (double s : {0.7, 0.9}) {
      AttentionOptions ao;
      ao.policy = SelectionPolicy::kThreshold;
      ao.sparsity = s;
      ao.block_size = 1;
      SQZ_ASSIGN_OR_RETURN(AttentionFidelity f, LayerAverage(snap, queries, nq, ao));
      table += AttentionRow(cf, false, "threshold s=" + Fmt(s, 2), f);
    }
  }
  out << "\n" << table;
  return OkStatus();
}

// Teacher-forced and free-running generation over a context.
struct Generation {
  std::vector<float> logits;    // [gen][vocab]: distribution of generated token i
  std::vector<int32_t> tokens;  // [gen] greedy tokens (free-running) or the forced ones
  std::vector<float> q;         // [layers][T][q_heads][d] queries of the prompt tokens
};

StatusOr<Generation> Generate(Backend& b, const ContextAttention& ctx,
                              const std::vector<int32_t>& prompt, int64_t gen,
                              const std::vector<int32_t>* forced) {
  const ModelConfig& c = b.config();
  Generation g;
  g.logits.resize(static_cast<size_t>(gen) * c.vocab);
  g.q.resize(static_cast<size_t>(c.layers) * prompt.size() * c.q_dim());
  SQZ_ASSIGN_OR_RETURN(SeqId seq, b.AddSequence());
  StepInput in{seq, prompt, &ctx, false, g.q.data()};
  Status st = b.Forward({&in, 1}, g.logits.data());
  for (int64_t i = 0; st.ok() && i < gen; ++i) {
    const float* row = g.logits.data() + i * c.vocab;
    const int32_t next =
        forced ? (*forced)[i] : static_cast<int32_t>(std::max_element(row, row + c.vocab) - row);
    g.tokens.push_back(next);
    if (i + 1 == gen) break;
    StepInput step{seq, std::span<const int32_t>(&g.tokens.back(), 1), &ctx, false};
    st = b.Forward({&step, 1}, g.logits.data() + (i + 1) * c.vocab);
  }
  (void)b.FreeSequence(seq);
  if (!st.ok()) return st;
  return g;
}

// KL(p || q) of the softmax of two logit rows.
double KlDivergence(const float* p_logits, const float* q_logits, int64_t n) {
  auto logsumexp = [n](const float* x) {
    const float m = *std::max_element(x, x + n);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
    return m + std::log(s);
  };
  const double lp = logsumexp(p_logits), lq = logsumexp(q_logits);
  double kl = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = p_logits[i] - lp, b = q_logits[i] - lq;
    kl += std::exp(a) * (a - b);
  }
  return std::max(0.0, kl);
}

Status ModelMode(const Args& a, std::ostream& out) {
  if (!a.Has("model") || !a.Has("context-file")) {
    return InvalidArgumentError("model mode needs --model DIR and --context-file FILE");
  }
  const std::string dir = a.Str("model", "");
  SQZ_ASSIGN_OR_RETURN(int64_t gen, Int(a, "generate", 64, 1));
  SQZ_ASSIGN_OR_RETURN(std::vector<double> budgets, List(a, "budgets", "0.05,0.125,0.25,0.5"));
  SQZ_ASSIGN_OR_RETURN(std::vector<double> cfs, List(a, "centroid-fractions", "0.05,0.1"));
  std::ifstream f(a.Str("context-file", ""));
  if (!f) return NotFoundError("cannot read --context-file " + a.Str("context-file", ""));
  std::stringstream text;
  text << f.rdbuf();
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadHfModel(dir));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromHfDirectory(dir));
  const std::vector<int32_t> context = tok->Encode(text.str(), true);
  std::vector<std::string> query_texts =
      a.Has("query") ? a.flags.at("query")
                     : std::vector<std::string>{"One day, Lily and Max", "Tim was sad because",
                                                "The red ball", "Lily said"};
  std::vector<std::vector<int32_t>> queries;
  int64_t longest = 0;
  for (const std::string& q : query_texts) {
    queries.push_back(tok->Encode(q, false));
    if (queries.back().empty()) return InvalidArgumentError("query '" + q + "' has no tokens");
    longest = std::max<int64_t>(longest, queries.back().size());
  }
  const int64_t total = static_cast<int64_t>(context.size()) + longest + gen;
  if (total > model->config.max_positions) {
    return InvalidArgumentError("context + query + generated = " + std::to_string(total) +
                                " tokens exceed the model's " +
                                std::to_string(model->config.max_positions) + " positions");
  }
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> backend,
                       CpuBackend::Create(*model, CpuBackendOptions{total / kKvBlockTokens + 8}));
  auto t0 = Clock::now();
  SQZ_ASSIGN_OR_RETURN(CapturedContext captured,
                       CaptureContext(*backend, context, SqueezeOptions{}));
  const double prefill_s = Seconds(t0);
  const ModelConfig& mc = model->config;
  out << "Model " << dir << ": " << mc.layers << " layers, " << mc.q_heads << " q / " << mc.kv_heads
      << " kv heads, head_dim " << mc.head_dim << ". Context " << context.size()
      << " tokens (dense prefill + capture " << Fmt(prefill_s, 3) << " s); " << queries.size()
      << " queries, " << gen << " generated tokens each; prefill blocks of 64.\n\n";
  std::string attn = kAttentionHeader;
  std::string e2e =
      "| centroids | lookup | KV budget | keys read | greedy agreement (forced) | matching "
      "free-run "
      "prefix | mean KL(dense‖squeezed) |\n|---|---|---|---|---|---|---|\n";
  for (double cf : cfs) {
    t0 = Clock::now();
    SQZ_ASSIGN_OR_RETURN(ContextSnapshot snap, BuildSnapshot(captured, OptionsFor(cf)));
    out << "- centroid fraction " << cf << ": k = " << snap.heads[0].counts.size()
        << " per head, snapshot build " << Fmt(Seconds(t0), 3) << " s\n";
    DenseContextAttention dense(snap);
    std::vector<Generation> ref;
    for (const auto& q : queries) {
      SQZ_ASSIGN_OR_RETURN(Generation g, Generate(*backend, dense, q, gen, nullptr));
      ref.push_back(std::move(g));
    }
    for (double b : budgets) {
      for (bool hier : {false, true}) {
        AttentionOptions ao;
        ao.kv_budget = b;
        ao.hierarchical = hier;
        AttentionFidelity fa;
        double agree = 0, prefix = 0, kl = 0, keys = 0;
        for (size_t i = 0; i < queries.size(); ++i) {
          SqueezedContextAttention sq(snap, ao);
          SQZ_ASSIGN_OR_RETURN(Generation forced,
                               Generate(*backend, sq, queries[i], gen, &ref[i].tokens));
          keys += sq.usage().share() / queries.size();
          SqueezedContextAttention sq_free(snap, ao);
          SQZ_ASSIGN_OR_RETURN(Generation free,
                               Generate(*backend, sq_free, queries[i], gen, nullptr));
          int64_t match = 0;
          while (match < gen && free.tokens[match] == ref[i].tokens[match]) ++match;
          prefix += static_cast<double>(match) / queries.size();
          for (int64_t t = 0; t < gen; ++t) {
            const float* pd = ref[i].logits.data() + t * mc.vocab;
            const float* ps = forced.logits.data() + t * mc.vocab;
            agree += (std::max_element(pd, pd + mc.vocab) - pd ==
                      std::max_element(ps, ps + mc.vocab) - ps) /
                     double(gen * queries.size());
            kl += KlDivergence(pd, ps, mc.vocab) / double(gen * queries.size());
          }
          SQZ_ASSIGN_OR_RETURN(AttentionFidelity f,
                               LayerAverage(snap, ref[i].q, queries[i].size(), ao));
          fa.mass_recall += f.mass_recall / queries.size();
          fa.min_mass_recall =
              i == 0 ? f.min_mass_recall : std::min(fa.min_mass_recall, f.min_mass_recall);
          fa.rel_l2_error += f.rel_l2_error / queries.size();
          fa.keys_read_share += f.keys_read_share / queries.size();
          fa.body_share += f.body_share / queries.size();
        }
        attn += AttentionRow(cf, hier, Fmt(b, 3), fa);
        e2e += "| " + Fmt(cf, 3) + " | " + (hier ? "hierarchical" : "flat") + " | " + Fmt(b, 3) +
               " | " + Fmt(keys) + " | " + Fmt(agree) + " | " + Fmt(prefix, 1) + " / " +
               std::to_string(gen) + " | " + Fmt(kl, 5) + " |\n";
      }
    }
  }
  out << "\nAttention over the query tokens (mean over layers and queries):\n\n" << attn;
  out << "\nEnd to end against dense decoding:\n\n" << e2e;
  return OkStatus();
}

}  // namespace

int RunFidelity(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  const std::string mode = args.empty() ? "" : args[0];
  std::vector<std::string> known;
  if (mode == "synthetic") {
    known = {"n",       "d",    "components", "kv-heads",          "q-heads",
             "queries", "seed", "budgets",    "centroid-fractions"};
  } else if (mode == "model") {
    known = {"model", "context-file", "query", "generate", "budgets", "centroid-fractions"};
  } else {
    err << "usage: sqz-fidelity synthetic|model [--flag value]... (see tools/fidelity/"
           "fidelity_cli.h)\n";
    return 2;
  }
  StatusOr<Args> parsed = Parse(args, known);
  if (!parsed.ok()) {
    err << "sqz-fidelity: " << parsed.status().message() << "\n";
    return 2;
  }
  const Status st = mode == "synthetic" ? Synthetic(*parsed, out) : ModelMode(*parsed, out);
  if (!st.ok()) {
    err << "sqz-fidelity: " << st.ToString() << "\n";
    return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace sqz::tools
