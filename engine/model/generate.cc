#include "engine/model/generate.h"

#include <algorithm>
#include <chrono>
#include <memory>

namespace sqz {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// One request in flight.
struct Live {
  size_t index = 0;
  SeqId seq = -1;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StopChecker> stop;
  std::unique_ptr<IncrementalDecoder> decoder;
  int64_t fed = 0;       // prompt tokens fed so far
  int32_t pending = -1;  // sampled token not yet fed
  bool done = false;
};

// Frees the sequences on every exit path.
class SequenceGuard {
 public:
  explicit SequenceGuard(Backend& b) : backend_(b) {}
  ~SequenceGuard() {
    for (SeqId s : seqs_) (void)backend_.FreeSequence(s);
  }
  void Add(SeqId s) { seqs_.push_back(s); }

 private:
  Backend& backend_;
  std::vector<SeqId> seqs_;
};

}  // namespace

StatusOr<std::vector<GenerationResult>> Generate(Backend& backend,
                                                 std::span<const GenerationRequest> requests,
                                                 const GenerateOptions& options) {
  const auto start = Clock::now();
  if (options.prefill_chunk < 1) {
    return InvalidArgumentError("Generate: prefill_chunk must be >= 1");
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    const std::string where = "request " + std::to_string(i) + ": ";
    if (r.prompt.empty()) return InvalidArgumentError(where + "empty prompt");
    Status s = r.sampling.Validate();
    if (!s.ok()) return s.WithContext("request " + std::to_string(i));
    if (!r.sampling.stop.empty() && options.tokenizer == nullptr) {
      return InvalidArgumentError(where + "stop strings need a tokenizer");
    }
  }
  const ModelConfig& config = backend.config();
  std::vector<GenerationResult> results(requests.size());
  std::vector<Live> live(requests.size());
  SequenceGuard guard(backend);
  for (size_t i = 0; i < requests.size(); ++i) {
    Live& l = live[i];
    l.index = i;
    SQZ_ASSIGN_OR_RETURN(l.seq, backend.AddSequence());
    guard.Add(l.seq);
    l.sampler = std::make_unique<Sampler>(requests[i].sampling, requests[i].prompt);
    l.stop = std::make_unique<StopChecker>(requests[i].sampling.stop);
    if (options.tokenizer) {
      // The completion continues the prompt's text unless the prompt is only special tokens.
      bool continues = false;
      for (int32_t t : requests[i].prompt) continues |= !options.tokenizer->IsSpecial(t);
      l.decoder = std::make_unique<IncrementalDecoder>(*options.tokenizer, true, continues);
    }
    results[i].prompt_tokens = static_cast<int64_t>(requests[i].prompt.size());
  }

  auto finish = [&](Live& l, const char* reason) {
    GenerationResult& res = results[l.index];
    if (l.decoder && !l.stop->stopped()) {
      std::string tail = l.stop->Push(l.decoder->Flush());
      tail += l.stop->Flush();
      res.text += tail;
      if (options.on_token && !tail.empty()) options.on_token(l.index, -1, tail);
    }
    res.finish_reason = l.stop->stopped() ? "stop" : reason;
    res.total_s = Seconds(start);
    l.done = true;
  };

  // Handles a freshly sampled token; returns whether the request goes on.
  auto accept = [&](Live& l, const SampleResult& sample) {
    const GenerationRequest& req = requests[l.index];
    GenerationResult& res = results[l.index];
    if (res.tokens.empty() && res.samples.empty()) res.time_to_first_token_s = Seconds(start);
    const int32_t t = sample.token;
    const bool is_eos =
        std::find(options.eos_ids.begin(), options.eos_ids.end(), t) != options.eos_ids.end();
    const auto& stop_ids = req.sampling.stop_token_ids;
    if ((is_eos && !req.sampling.ignore_eos) ||
        std::find(stop_ids.begin(), stop_ids.end(), t) != stop_ids.end()) {
      finish(l, "stop");
      return;
    }
    res.tokens.push_back(t);
    res.samples.push_back(sample);
    std::string piece;
    if (l.decoder) {
      piece = l.stop->Push(l.decoder->Push(t));
      res.text += piece;
    }
    if (options.on_token) options.on_token(l.index, t, piece);
    if (l.stop->stopped()) {
      finish(l, "stop");
      return;
    }
    const int64_t ctx = req.context ? req.context->length() : 0;
    if (static_cast<int64_t>(res.tokens.size()) >= req.sampling.max_tokens ||
        ctx + backend.SequenceLength(l.seq) + 1 > config.max_positions) {
      finish(l, "length");
      return;
    }
    l.pending = t;
  };

  std::vector<StepInput> batch;
  std::vector<Live*> members;
  std::vector<float> logits;
  while (true) {
    batch.clear();
    members.clear();
    for (Live& l : live) {
      if (l.done) continue;
      const GenerationRequest& req = requests[l.index];
      const int64_t prompt_len = static_cast<int64_t>(req.prompt.size());
      StepInput in;
      in.seq = l.seq;
      in.context = req.context;
      if (l.fed < prompt_len) {
        const int64_t n = std::min(options.prefill_chunk, prompt_len - l.fed);
        in.tokens = std::span<const int32_t>(req.prompt.data() + l.fed, n);
        l.fed += n;
      } else {
        in.tokens = std::span<const int32_t>(&l.pending, 1);
      }
      batch.push_back(in);
      members.push_back(&l);
    }
    if (batch.empty()) break;
    logits.resize(batch.size() * config.vocab);
    SQZ_RETURN_IF_ERROR(backend.Forward(batch, logits.data()));
    for (size_t b = 0; b < members.size(); ++b) {
      Live& l = *members[b];
      if (l.fed < static_cast<int64_t>(requests[l.index].prompt.size())) continue;  // mid-prefill
      accept(l, l.sampler->Sample(logits.data() + b * config.vocab, config.vocab));
    }
  }
  return results;
}

}  // namespace sqz
