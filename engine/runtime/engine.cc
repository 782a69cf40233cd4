#include "engine/runtime/engine.h"

#include <pthread.h>

#include <algorithm>
#include <cstring>

#include "engine/runtime/scheduler.h"

namespace sqz {

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

int64_t RoundUpToBlock(int64_t tokens) {
  return (tokens + kKvBlockTokens - 1) / kKvBlockTokens * kKvBlockTokens;
}

}  // namespace

// A generation request inside the engine.
struct Engine::Active {
  int64_t id = 0;
  GenerateJob job;
  std::shared_ptr<RequestStream> stream;
  SeqId seq = -1;
  int64_t prefilled = 0;                        // prompt tokens in the KV cache
  std::vector<int32_t> generated;
  int32_t pending_token = -1;                   // sampled, not yet fed back
  std::unique_ptr<SnapshotAttention> attention;  // null without a context
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<IncrementalDecoder> decoder;
  std::unique_ptr<StopChecker> stop;
  Clock::time_point admitted, first_token;
  int64_t reserved_tokens() const {
    return RoundUpToBlock(static_cast<int64_t>(job.prompt.size()) + job.sampling.max_tokens);
  }
};

// A registration inside the engine: prefill progress, then the captured K/V for the worker.
struct Engine::Ingesting {
  int64_t id = 0;
  IngestRequest request;
  SeqId seq = -1;
  int64_t prefilled = 0;
  int64_t window_len = 0;
  CapturedContext captured;  // window_q filled during prefill; k/v at the end
  std::vector<float> q_scratch;
};

Engine::Engine(Backend* backend, const Tokenizer* tokenizer, const EngineLimits& limits)
    : backend_(backend), tokenizer_(tokenizer), limits_(limits) {}

StatusOr<std::unique_ptr<Engine>> Engine::Start(Backend* backend, const Tokenizer* tokenizer,
                                                const EngineLimits& limits) {
  if (backend == nullptr || tokenizer == nullptr) {
    return InvalidArgumentError("Engine::Start needs a backend and a tokenizer");
  }
  if (tokenizer->vocab_size() > backend->config().vocab) {
    return InvalidArgumentError("tokenizer vocabulary (" + std::to_string(tokenizer->vocab_size()) +
                                ") is larger than the model's (" +
                                std::to_string(backend->config().vocab) + ")");
  }
  std::unique_ptr<Engine> e(new Engine(backend, tokenizer, limits));
  e->loop_thread_ = std::thread([p = e.get()] { p->Loop(); });
  pthread_setname_np(e->loop_thread_.native_handle(), "engine-loop");
  e->worker_thread_ = std::thread([p = e.get()] { p->WorkerLoop(); });
  pthread_setname_np(e->worker_thread_.native_handle(), "ingest-worker");
  return e;
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    accepting_ = false;
  }
  cv_.notify_all();
  if (loop_thread_.joinable()) loop_thread_.join();
  {
    std::lock_guard<std::mutex> lock(worker_mu_);
    worker_stopping_ = true;
  }
  worker_cv_.notify_all();
  if (worker_thread_.joinable()) worker_thread_.join();
}

StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(GenerateJob job) {
  auto a = std::make_unique<Active>();
  a->job = std::move(job);
  a->stream = std::make_shared<RequestStream>();
  const KvPoolStats pool = backend_->Stats();
  if (a->reserved_tokens() > pool.total_blocks * pool.block_tokens) {
    return ResourceExhaustedError(
        "request needs " + std::to_string(a->reserved_tokens()) +
        " KV tokens (prompt + max_tokens) but the KV pool holds " +
        std::to_string(pool.total_blocks * pool.block_tokens) +
        "; lower max_tokens or raise engine.memory.kv_pool_mb");
  }
  auto stream = a->stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return UnavailableError("the server is shutting down");
    if (queued_ >= limits_.scheduler.max_queue) {
      return ResourceExhaustedError("request queue is full (" +
                                    std::to_string(limits_.scheduler.max_queue) +
                                    " waiting); retry later");
    }
    a->id = next_internal_id_++;
    ++queued_;
    inbox_.push_back(std::move(a));
  }
  cv_.notify_all();
  return stream;
}

Status Engine::SubmitIngest(IngestRequest request) {
  const KvPoolStats pool = backend_->Stats();
  const int64_t need = RoundUpToBlock(static_cast<int64_t>(request.tokens.size()));
  if (need > pool.total_blocks * pool.block_tokens) {
    return ResourceExhaustedError("context of " + std::to_string(request.tokens.size()) +
                                  " tokens does not fit the KV pool (" +
                                  std::to_string(pool.total_blocks * pool.block_tokens) +
                                  " tokens); raise engine.memory.kv_pool_mb");
  }
  if (request.tokens.empty()) return InvalidArgumentError("context has no tokens");
  auto ing = std::make_unique<Ingesting>();
  ing->request = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return UnavailableError("the server is shutting down");
    ing->id = next_internal_id_++;
    ingest_inbox_.push_back(std::move(ing));
  }
  cv_.notify_all();
  return OkStatus();
}

void Engine::CancelAll(Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_all_ = std::move(why);
  }
  cv_.notify_all();
}

void Engine::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  accepting_ = false;
}

EngineStats Engine::stats() const {
  EngineStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.queued = queued_;
  }
  s.running = stat_running_.load();
  s.ingesting = stat_ingesting_.load();
  const KvPoolStats pool = backend_->Stats();
  s.kv_blocks_used = pool.used_blocks;
  s.kv_blocks_total = pool.total_blocks;
  s.steps = stat_steps_.load();
  s.last_batch_tokens = stat_batch_.load();
  return s;
}

void Engine::Loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !ingest_inbox_.empty() || !waiting_.empty() ||
               !running_.empty() || !ingesting_.empty();
      });
      if (stopping_) break;
      while (!inbox_.empty()) {
        waiting_.push_back(std::move(inbox_.front()));
        inbox_.pop_front();
      }
      while (!ingest_inbox_.empty()) {
        ingesting_.push_back(std::move(ingest_inbox_.front()));
        ingest_inbox_.pop_front();
      }
      if (cancel_all_) {
        for (auto* list : {&waiting_, &running_}) {
          for (auto& a : *list) a->stream->Cancel(*cancel_all_);
        }
        cancel_all_.reset();
      }
    }
    RunStep();
  }
  // Shutting down: everything still here ends with UNAVAILABLE.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& a : inbox_) waiting_.push_back(std::move(a));
    inbox_.clear();
    for (auto& i : ingest_inbox_) ingesting_.push_back(std::move(i));
    ingest_inbox_.clear();
  }
  for (auto* list : {&waiting_, &running_}) {
    for (auto& a : *list) {
      FinishRequest(*a, UnavailableError("the server stopped before the request finished"),
                    FinishReason::kNone, "");
    }
    list->clear();
  }
  for (auto& ing : ingesting_) {
    if (ing->seq >= 0) (void)backend_->FreeSequence(ing->seq);
    if (ing->request.on_done) {
      ing->request.on_done(UnavailableError("the server stopped during ingestion"));
    }
  }
  ingesting_.clear();
}

void Engine::FinishRequest(Active& a, Status status, FinishReason reason,
                           const std::string& stop) {
  if (a.seq >= 0) {
    (void)backend_->FreeSequence(a.seq);
    a.seq = -1;
  }
  GenerateEvent e;
  e.final = true;
  // Text held back by the stop checker or the decoder is flushed on a normal finish.
  if (status.ok() && reason != FinishReason::kStop) {
    std::string rest;
    if (a.decoder && a.stop) {
      rest = a.stop->Push(a.decoder->Flush());
      if (!a.stop->stopped()) rest += a.stop->Flush();
    }
    if (!rest.empty()) {
      GenerateEvent chunk;
      chunk.text = std::move(rest);
      a.stream->Push(std::move(chunk));
    }
  }
  e.status = std::move(status);
  e.finish_reason = reason;
  e.stop_string = stop;
  e.usage.context_tokens = a.job.context ? a.job.context->dims.n_tokens : 0;
  e.usage.prompt_tokens = static_cast<int64_t>(a.job.prompt.size());
  e.usage.completion_tokens = static_cast<int64_t>(a.generated.size());
  e.usage.context_keys_read = a.attention ? a.attention->usage().share() : 0.0;
  const auto now = Clock::now();
  const auto admitted = a.admitted == Clock::time_point() ? now : a.admitted;
  e.timings.queued_s = Seconds(admitted - a.job.arrival);
  e.timings.time_to_first_token_s =
      a.first_token == Clock::time_point() ? 0.0 : Seconds(a.first_token - a.job.arrival);
  e.timings.total_s = Seconds(now - a.job.arrival);
  a.stream->Push(std::move(e));
  a.job.lease.reset();
}

void Engine::EmitToken(Active& a, const SampleResult& sample) {
  const int32_t token = sample.token;
  if (a.generated.empty()) a.first_token = Clock::now();
  a.generated.push_back(token);
  a.pending_token = token;
  GenerateEvent chunk;
  chunk.token_ids = {token};
  if (a.job.logprobs) chunk.logprobs.push_back(sample.logprob);
  for (const auto& t : sample.top) chunk.top_logprobs.push_back({t.token, t.logprob});
  const auto& sp = a.job.sampling;
  const bool is_eos = tokenizer_->IsEos(token) && !sp.ignore_eos;
  const bool is_stop_id =
      std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), token) != sp.stop_token_ids.end();
  // EOS and stop ids end the stream without adding text.
  if (!is_eos && !is_stop_id) chunk.text = a.stop->Push(a.decoder->Push(token));
  a.stream->Push(std::move(chunk));
  const int64_t context_len = a.job.context ? a.job.context->dims.n_tokens : 0;
  const int64_t length = context_len + static_cast<int64_t>(a.job.prompt.size() + a.generated.size());
  if (a.stop->stopped()) {
    FinishRequest(a, OkStatus(), FinishReason::kStop, a.stop->matched());
  } else if (is_eos || is_stop_id) {
    FinishRequest(a, OkStatus(), FinishReason::kStop, "");
  } else if (static_cast<int64_t>(a.generated.size()) >= sp.max_tokens ||
             length >= backend_->config().max_positions) {
    FinishRequest(a, OkStatus(), FinishReason::kLength, "");
  }
}

bool Engine::RunStep() {
  const auto now = Clock::now();
  // Cancellation and deadlines become scheduler input: the request leaves at this step boundary.
  std::vector<SchedRequest> running_view, waiting_view;
  auto view = [&](const Active& a) {
    SchedRequest r;
    r.id = a.id;
    r.prompt_remaining = static_cast<int64_t>(a.job.prompt.size()) - a.prefilled;
    r.reserved_tokens = a.reserved_tokens();
    // SQUEEZED selection blocks must not straddle prefill chunks (chunk-invariant results).
    if (a.job.context && a.job.attention.mode == AttentionMode::kSqueezed) {
      r.prefill_align = a.job.attention.block_size;
    }
    r.cancelled = a.stream->cancelled() || (a.job.deadline && now >= *a.job.deadline);
    return r;
  };
  for (const auto& a : running_) running_view.push_back(view(*a));
  for (const auto& a : waiting_) waiting_view.push_back(view(*a));
  std::vector<IngestJob> ingest_view;
  int64_t ingest_reserved = 0;
  for (auto it = ingesting_.begin(); it != ingesting_.end();) {
    auto& ing = **it;
    if (ing.request.abandoned && ing.request.abandoned->load()) {
      if (ing.seq >= 0) (void)backend_->FreeSequence(ing.seq);
      if (ing.request.on_done) ing.request.on_done(CancelledError("ingestion abandoned"));
      it = ingesting_.erase(it);
      continue;
    }
    ingest_reserved += RoundUpToBlock(static_cast<int64_t>(ing.request.tokens.size()));
    ingest_view.push_back(
        {ing.id, static_cast<int64_t>(ing.request.tokens.size()) - ing.prefilled});
    ++it;
  }
  const KvPoolStats pool = backend_->Stats();
  SchedulerLimits limits =
      LimitsFromOptions(limits_.scheduler, pool.total_blocks * pool.block_tokens - ingest_reserved);
  const StepPlan plan = PlanStep(limits, running_view, waiting_view, ingest_view);

  auto take = [](std::vector<std::unique_ptr<Active>>& list, int64_t id) {
    for (auto it = list.begin(); it != list.end(); ++it) {
      if ((*it)->id == id) {
        auto a = std::move(*it);
        list.erase(it);
        return a;
      }
    }
    return std::unique_ptr<Active>();
  };
  for (int64_t id : plan.finished_cancelled) {
    auto a = take(running_, id);
    const bool was_waiting = !a;
    if (!a) a = take(waiting_, id);
    if (!a) continue;
    if (was_waiting) {
      std::lock_guard<std::mutex> lock(mu_);
      --queued_;
    }
    Status why = a->stream->cancelled() ? a->stream->cancel_status()
                                        : DeadlineExceededError("deadline passed after " +
                                                                std::to_string(a->generated.size()) +
                                                                " generated tokens");
    FinishRequest(*a, why, FinishReason::kCancelled, "");
  }
  for (int64_t id : plan.admitted) {
    auto a = take(waiting_, id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --queued_;
    }
    a->admitted = now;
    auto seq = backend_->AddSequence();
    Status failed = seq.status();
    if (seq.ok()) {
      a->seq = *seq;
      if (a->job.context) {
        auto attn = MakeContextAttention(*a->job.context, a->job.attention);
        if (attn.ok()) {
          a->attention = std::move(attn).value();
        } else {
          failed = attn.status();
        }
      }
      a->sampler = std::make_unique<Sampler>(a->job.sampling, a->job.prompt);
      a->decoder = std::make_unique<IncrementalDecoder>(*tokenizer_, /*skip_special=*/true,
                                                        /*continues_text=*/true);
      a->stop = std::make_unique<StopChecker>(a->job.sampling.stop);
    }
    if (!failed.ok()) {
      FinishRequest(*a, failed, FinishReason::kNone, "");
      continue;
    }
    running_.push_back(std::move(a));
  }
  stat_running_.store(static_cast<int64_t>(running_.size()));

  // Build the batch: requests first (in plan order), then the ingestion chunk.
  std::vector<StepInput> batch;
  std::vector<Active*> batch_requests;
  std::vector<int32_t> decode_tokens(plan.work.size());
  for (size_t i = 0; i < plan.work.size(); ++i) {
    const StepWork& w = plan.work[i];
    Active* a = nullptr;
    for (auto& r : running_) {
      if (r->id == w.request_id) a = r.get();
    }
    if (!a) continue;  // finished by an admission failure above
    StepInput in;
    in.seq = a->seq;
    in.context = a->attention.get();
    if (w.decode) {
      decode_tokens[i] = a->pending_token;
      in.tokens = std::span<const int32_t>(&decode_tokens[i], 1);
    } else {
      in.tokens = std::span<const int32_t>(a->job.prompt.data() + a->prefilled, w.tokens);
    }
    batch.push_back(in);
    batch_requests.push_back(a);
  }
  Ingesting* ing = nullptr;
  if (plan.ingest_id >= 0) {
    for (auto& i : ingesting_) {
      if (i->id == plan.ingest_id) ing = i.get();
    }
  }
  if (ing != nullptr) {
    if (ing->seq < 0) {
      auto seq = backend_->AddSequence();
      if (!seq.ok()) {
        if (ing->request.on_done) ing->request.on_done(seq.status());
        ingesting_.erase(std::find_if(ingesting_.begin(), ingesting_.end(),
                                      [&](auto& p) { return p.get() == ing; }));
        ing = nullptr;
      } else {
        ing->seq = *seq;
        const auto& c = backend_->config();
        const int64_t n = static_cast<int64_t>(ing->request.tokens.size());
        ing->window_len = WindowLength(n, ing->request.options);
        ing->captured.layers = c.layers;
        ing->captured.kv_heads = c.kv_heads;
        ing->captured.q_heads = c.q_heads;
        ing->captured.head_dim = c.head_dim;
        ing->captured.n_tokens = n;
        ing->captured.window_q.assign(
            static_cast<size_t>(c.layers) * ing->window_len * c.q_heads * c.head_dim, 0.0f);
        stat_ingesting_.fetch_add(1);
      }
    }
  }
  if (ing != nullptr) {
    StepInput in;
    in.seq = ing->seq;
    in.tokens = std::span<const int32_t>(ing->request.tokens.data() + ing->prefilled,
                                         plan.ingest_tokens);
    // Capture the queries of the chunk when it overlaps the observation window.
    const int64_t n = static_cast<int64_t>(ing->request.tokens.size());
    const int64_t window_start = n - ing->window_len;
    if (ing->prefilled + plan.ingest_tokens > window_start) {
      const auto& c = backend_->config();
      ing->q_scratch.resize(static_cast<size_t>(c.layers) * plan.ingest_tokens *
                            c.q_heads * c.head_dim);
      in.q_out = ing->q_scratch.data();
    }
    batch.push_back(in);
  }
  if (batch.empty()) return false;

  // Where the backend samples (CudaBackend), only token ids leave the device, unless a request
  // wants log-probabilities (they need the logits). Greedy picks the same token either way; a draw
  // (temperature > 0) uses the backend's seeded stream instead of the Sampler's (backend.h).
  bool sampled_in_backend =
      backend_->SamplesInBackend() &&
      std::none_of(batch_requests.begin(), batch_requests.end(), [](const Active* a) {
        return a->job.logprobs || a->job.sampling.top_logprobs > 0;
      });
  Status st;
  if (sampled_in_backend) {
    sampling_.assign(batch.size(), TokenSampling{});
    for (size_t i = 0; i < batch_requests.size(); ++i) {
      const Active& a = *batch_requests[i];
      const SamplingParams& sp = a.job.sampling;
      TokenSampling& t = sampling_[i];
      t.temperature = sp.temperature;
      t.top_k = sp.top_k;
      t.top_p = sp.top_p;
      t.min_p = sp.min_p;
      t.repetition_penalty = sp.repetition_penalty;
      t.presence_penalty = sp.presence_penalty;
      t.frequency_penalty = sp.frequency_penalty;
      t.seed = sp.seed;
      t.counter = a.generated.size();
      t.prompt = a.job.prompt;
      t.generated = a.generated;
    }
    sampled_.assign(batch.size(), -1);
    st = backend_->ForwardSample(batch, sampling_, sampled_.data());
    if (st.code() == StatusCode::kResourceExhausted &&
        st.message().find("max_penalty_tokens") != std::string::npos) {
      // Too many penalised tokens for the device buffer (refused before any change): sample on
      // the host this step.
      sampled_in_backend = false;
    }
  }
  if (!sampled_in_backend) {
    logits_.resize(batch.size() * static_cast<size_t>(backend_->config().vocab));
    st = backend_->Forward(batch, logits_.data());
  }
  stat_steps_.fetch_add(1);
  stat_batch_.store(plan.total_tokens());
  if (!st.ok()) {
    // A failed step leaves every sequence unchanged (Backend contract); the requests in it fail.
    for (Active* a : batch_requests) {
      FinishRequest(*a, st.WithContext("engine step"), FinishReason::kNone, "");
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](auto& a) { return a->seq < 0; }),
                   running_.end());
    if (ing != nullptr) {
      if (ing->request.on_done) ing->request.on_done(st.WithContext("context prefill"));
      (void)backend_->FreeSequence(ing->seq);
      ingesting_.erase(std::find_if(ingesting_.begin(), ingesting_.end(),
                                    [&](auto& p) { return p.get() == ing; }));
      stat_ingesting_.fetch_sub(1);
    }
    return true;
  }

  const int64_t vocab = backend_->config().vocab;
  for (size_t i = 0; i < batch_requests.size(); ++i) {
    Active& a = *batch_requests[i];
    const float* row = sampled_in_backend ? nullptr : logits_.data() + i * vocab;
    if (a.prefilled < static_cast<int64_t>(a.job.prompt.size())) {
      a.prefilled += static_cast<int64_t>(batch[i].tokens.size());
      if (a.prefilled < static_cast<int64_t>(a.job.prompt.size())) continue;  // more prompt
    }
    if (sampled_in_backend) {
      SampleResult r;
      r.token = sampled_[i];
      a.sampler->Accept(r.token);  // keeps the host Sampler's penalty state for later host steps
      EmitToken(a, r);
    } else {
      EmitToken(a, a.sampler->Sample(row, vocab));
    }
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](auto& a) { return a->seq < 0; }),
                 running_.end());
  stat_running_.store(static_cast<int64_t>(running_.size()));

  if (ing != nullptr) {
    const auto& c = backend_->config();
    const int64_t n = static_cast<int64_t>(ing->request.tokens.size());
    const int64_t window_start = n - ing->window_len;
    const int64_t chunk = plan.ingest_tokens;
    if (!ing->q_scratch.empty() && ing->prefilled + chunk > window_start) {
      const int64_t row = static_cast<int64_t>(c.q_heads) * c.head_dim;
      for (int l = 0; l < c.layers; ++l) {
        for (int64_t t = std::max<int64_t>(0, window_start - ing->prefilled); t < chunk; ++t) {
          const int64_t w = ing->prefilled + t - window_start;
          std::memcpy(ing->captured.window_q.data() + (l * ing->window_len + w) * row,
                      ing->q_scratch.data() + (l * chunk + t) * row, row * sizeof(float));
        }
      }
    }
    ing->prefilled += chunk;
    if (ing->request.on_progress) {
      ing->request.on_progress(IngestStage::kPrefilling, static_cast<double>(ing->prefilled) / n);
    }
    if (ing->prefilled == n) CompleteIngestPrefill(*ing);
  }
  return true;
}

void Engine::CompleteIngestPrefill(Ingesting& ing) {
  const auto& c = backend_->config();
  const int64_t n = ing.captured.n_tokens;
  const size_t per_layer = static_cast<size_t>(n) * c.kv_heads * c.head_dim;
  ing.captured.k.resize(per_layer * c.layers);
  ing.captured.v.resize(per_layer * c.layers);
  Status st;
  for (int l = 0; l < c.layers && st.ok(); ++l) {
    st = backend_->ReadKv(ing.seq, l, 0, n, ing.captured.k.data() + l * per_layer,
                          ing.captured.v.data() + l * per_layer);
  }
  (void)backend_->FreeSequence(ing.seq);
  ing.seq = -1;
  auto it = std::find_if(ingesting_.begin(), ingesting_.end(),
                         [&](auto& p) { return p.get() == &ing; });
  std::unique_ptr<Ingesting> owned = std::move(*it);
  ingesting_.erase(it);
  if (!st.ok()) {
    stat_ingesting_.fetch_sub(1);
    if (owned->request.on_done) owned->request.on_done(st.WithContext("reading the context's KV"));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(worker_mu_);
    worker_queue_.push_back(std::move(owned));
  }
  worker_cv_.notify_one();
}

void Engine::WorkerLoop() {
  for (;;) {
    std::unique_ptr<Ingesting> ing;
    {
      std::unique_lock<std::mutex> lock(worker_mu_);
      worker_cv_.wait(lock, [&] { return worker_stopping_ || !worker_queue_.empty(); });
      if (worker_queue_.empty()) return;
      ing = std::move(worker_queue_.front());
      worker_queue_.pop_front();
    }
    auto& req = ing->request;
    StatusOr<ContextSnapshot> snapshot =
        (req.abandoned && req.abandoned->load())
            ? StatusOr<ContextSnapshot>(CancelledError("ingestion abandoned"))
        : limits_.build_snapshot
            ? limits_.build_snapshot(ing->captured, req.options, req.on_progress)
            : BuildSnapshot(ing->captured, req.options, req.on_progress);
    stat_ingesting_.fetch_sub(1);
    if (req.on_done) req.on_done(std::move(snapshot));
  }
}

}  // namespace sqz
