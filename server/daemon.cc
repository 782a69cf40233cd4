#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "engine/model/cpu_backend.h"
#if SQZ_WITH_CUDA_BACKEND
#include "engine/cuda/cuda_backend.h"
#include "engine/squeeze_gpu/gpu_index_builder.h"
#endif

namespace sqz {
namespace {

StatusOr<std::string> ReadPem(const std::string& key, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError(key + ": cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const TlsOptions& tls) {
  if (!tls.enabled) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  SQZ_ASSIGN_OR_RETURN(pair.private_key, ReadPem("server.tls.key_file", tls.key_file));
  SQZ_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem("server.tls.cert_file", tls.cert_file));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    SQZ_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                         ReadPem("server.tls.client_ca_file", tls.client_ca_file));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

const char* SqueezeVersion() { return SQZ_VERSION; }

Daemon::Daemon(const DaemonConfig& config) : config_(config) {}

Daemon::~Daemon() {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  // The engine first (in-flight ingestions end without changing their stored state; its callbacks
  // still reach the registry), then the registry (it finishes pending persistence), the backend
  // and RocksDB.
  if (engine_) engine_->StopAccepting();
  // No load may finish into an engine that is gone (a corrupt one would re-ingest).
  if (registry_) registry_->StopAcquiring(UnavailableError("the server is shutting down"));
  engine_.reset();
  registry_.reset();
  backend_.reset();
  store_.reset();
  http_.reset();
}

void Daemon::RegisterMetrics() {
  auto& m = metrics_;
  auto& s = state_.metrics;
  s.requests = m.AddCounter("sqz_requests_total", "Generate requests accepted.");
  s.request_errors = m.AddCounter("sqz_request_errors_total", "Generate requests that failed.");
  s.prompt_tokens = m.AddCounter("sqz_prompt_tokens_total", "Prompt tokens of accepted requests.");
  s.generated_tokens = m.AddCounter("sqz_generated_tokens_total", "Tokens generated.");
  s.ttft = m.AddHistogram("sqz_time_to_first_token_seconds", "Arrival to first token.",
                          metrics::LatencyBuckets());
  s.inter_token = m.AddHistogram("sqz_inter_token_latency_seconds",
                                 "Mean time between tokens of a request.",
                                 metrics::LatencyBuckets());
  s.keys_read = m.AddHistogram("sqz_context_keys_read_ratio",
                               "Share of fixed-context keys read per request.",
                               {0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0});
  auto& r = registry_metrics_;
  r.residency_hits = m.AddCounter("sqz_context_residency_hits_total",
                                  "Requests whose context was resident.");
  r.residency_loads = m.AddCounter("sqz_context_residency_loads_total",
                                   "Contexts loaded from storage into memory.");
  r.evictions = m.AddCounter("sqz_context_evictions_total", "Contexts evicted from memory.");
  r.reingestions = m.AddCounter("sqz_context_reingestions_total",
                                "Contexts rebuilt from their tokens (stale or corrupt).");
  r.resident_bytes = m.AddGauge("sqz_context_resident_bytes", "Bytes of resident contexts.");
  r.resident_contexts = m.AddGauge("sqz_context_resident", "Resident contexts.");
  r.ingest_seconds = m.AddHistogram("sqz_context_ingestion_seconds",
                                    "Registration to READY, per context.",
                                    {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600});
  r.load_waiting = m.AddGauge("sqz_context_load_waiting",
                              "Generate requests waiting for their context to be loaded (room in "
                              "the resident budget, then the load from storage).");
  r.load_wait_seconds = m.AddHistogram(
      "sqz_context_load_wait_seconds",
      "Time Generate requests waited for a context load (outcome: lease or error).",
      {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60});
  auto* queue = m.AddGauge("sqz_queue_depth", "Generate requests waiting for admission.");
  auto* running = m.AddGauge("sqz_running_requests", "Generate requests being decoded.");
  auto* ingesting = m.AddGauge("sqz_ingesting_contexts", "Contexts being ingested.");
  auto* batch = m.AddGauge("sqz_batch_tokens", "Tokens in the last engine step.");
  auto* kv_used = m.AddGauge("sqz_kv_pool_used_blocks", "KV pool blocks in use (16 tokens each).");
  auto* kv_total = m.AddGauge("sqz_kv_pool_total_blocks", "KV pool blocks in all.");
  auto* steps = m.AddGauge("sqz_engine_steps", "Engine steps run.");
  auto* streams = m.AddGauge("sqz_streams_in_flight", "Generate streams open.");
  m.SetCollector([this, queue, running, ingesting, batch, kv_used, kv_total, steps, streams] {
    streams->Set(static_cast<double>(state_.streams_in_flight.load()));
    if (!state_.ready.load()) return;
    const EngineStats st = engine_->stats();
    queue->Set(static_cast<double>(st.queued));
    running->Set(static_cast<double>(st.running));
    ingesting->Set(static_cast<double>(st.ingesting));
    batch->Set(static_cast<double>(st.last_batch_tokens));
    kv_used->Set(static_cast<double>(st.kv_blocks_used));
    kv_total->Set(static_cast<double>(st.kv_blocks_total));
    steps->Set(static_cast<double>(st.steps));
  });
}

StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config,
                                                const std::function<void(int)>& on_listening) {
  std::unique_ptr<Daemon> d(new Daemon(config));
  const DaemonConfig& c = d->config_;
  ServingState& st = d->state_;
  st.version = SqueezeVersion();
  st.config = &d->config_;
  for (const auto& entry : c.server.auth.api_keys) {
    const auto colon = entry.find(':');
    st.api_keys[entry.substr(colon + 1)] = entry.substr(0, colon);
  }
  if (c.engine.model.threads > 0) omp_set_num_threads(static_cast<int>(c.engine.model.threads));
  st.devices.push_back("cpu: " + std::to_string(omp_get_max_threads()) + " threads");
  d->RegisterMetrics();
  if (!c.server.metrics_address.empty()) {
    SQZ_ASSIGN_OR_RETURN(d->http_, metrics::HttpEndpoint::Start(c.server.metrics_address,
                                                                &d->metrics_));
  }
  SQZ_ASSIGN_OR_RETURN(d->store_, ContextStore::Open(c.storage));

  d->generation_ = std::make_unique<GenerationServiceImpl>(&st);
  d->contexts_ = std::make_unique<ContextServiceImpl>(&st);
  SQZ_ASSIGN_OR_RETURN(auto creds, MakeCredentials(c.server.tls));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(c.server.listen_address, creds, &d->port_);
  // A second server on the same port must fail, not share it (gRPC sets SO_REUSEPORT by default).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(c.server.limits.max_message_bytes));
  builder.RegisterService(d->generation_.get());
  builder.RegisterService(d->contexts_.get());
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || d->port_ == 0) {
    d->server_.reset();
    return UnavailableError("cannot listen on " + c.server.listen_address +
                            " (address in use or not local?)");
  }
  // Liveness: the process answers. Readiness (the overall service): the model is loaded.
  d->server_->GetHealthCheckService()->SetServingStatus(false);
  if (on_listening) on_listening(d->port_);
  SQZ_RETURN_IF_ERROR(d->LoadAndServe());
  return d;
}

Status Daemon::LoadAndServe() {
  const DaemonConfig& c = config_;
  const auto t0 = std::chrono::steady_clock::now();
  SQZ_ASSIGN_OR_RETURN(model_, LoadModel(c.engine.model.path));
  const ModelConfig& mc = model_.model->config;
  // KV pool blocks from the memory budget: 16 tokens x layers x kv_dim x (K and V) x element size.
  auto kv_blocks = [&](int64_t element_bytes) {
    const int64_t block_bytes = kKvBlockTokens * mc.layers * mc.kv_dim() * 2 * element_bytes;
    return std::max<int64_t>(1, (c.engine.memory.kv_pool_mb << 20) / block_bytes);
  };
  int64_t blocks = 0;
  if (c.engine.model.backend == "cuda") {
#if SQZ_WITH_CUDA_BACKEND
    const CudaOptions& co = c.engine.model.cuda;
    const bool fp32 = co.dtype == "fp32";
    CudaBackendOptions bo;
    bo.dtype = fp32 ? CudaDType::kF32 : CudaDType::kBf16;
    bo.kv_blocks = blocks = kv_blocks(fp32 ? 4 : 2);
    bo.device = static_cast<int>(co.device);
    bo.weights_budget_bytes = co.weights_mb << 20;
    bo.decode_workspace_bytes = co.workspace_mb << 20;
    bo.max_step_tokens = co.max_step_tokens;
    bo.cuda_graphs = co.graphs;
    bo.graph_max_batch = co.graph_max_batch;
    bo.context_budget_bytes = co.context_mb << 20;
    SQZ_ASSIGN_OR_RETURN(auto backend, CudaBackend::Create(*model_.model, bo));
    backend_ = std::move(backend);
    state_.devices = {"cuda:" + std::to_string(co.device) + ": " + co.dtype +
                      " weights and KV; fixed contexts resident on the GPU (" +
                      std::to_string(co.context_mb) + " MiB), Squeezed Attention on the GPU"};
#else
    return UnimplementedError("engine.model.backend 'cuda': this build has no CUDA backend "
                              "(configure with nvcc present, or -DSQZ_CUDA=ON)");
#endif
  } else {
    CpuBackendOptions bo;
    bo.kv_blocks = blocks = kv_blocks(sizeof(float));
    SQZ_ASSIGN_OR_RETURN(auto backend, CpuBackend::Create(*model_.model, bo));
    backend_ = std::move(backend);
  }
  EngineLimits limits;
  limits.scheduler = c.engine.scheduler;
  limits.max_new_tokens = c.server.limits.max_new_tokens;
#if SQZ_WITH_CUDA_BACKEND
  if (c.engine.model.backend == "cuda") {
    // Registrations are clustered on the GPU (issue 9); shapes the GPU ingestion lacks (head_dim
    // other than 64/128) or a device without room fall back to the CPU builder.
    const int device = static_cast<int>(c.engine.model.cuda.device);
    limits.build_snapshot = [device](const CapturedContext& captured, const SqueezeOptions& options,
                                     const IngestProgress& progress) -> StatusOr<ContextSnapshot> {
      if (progress) progress(IngestStage::kClustering, 0.0);
      cudaSetDevice(device);  // the ingest-worker thread's current device
      StatusOr<ContextSnapshot> s = BuildSnapshotOnDevice(captured, options);
      const StatusCode code = s.status().code();
      if (code == StatusCode::kUnimplemented || code == StatusCode::kFailedPrecondition ||
          code == StatusCode::kResourceExhausted) {
        spdlog::info("GPU ingestion unavailable ({}); clustering on the CPU",
                     s.status().ToString());
        return BuildSnapshot(captured, options, progress);
      }
      if (s.ok() && progress) progress(IngestStage::kCalibrating, 1.0);
      return s;
    };
  }
#endif
  SQZ_ASSIGN_OR_RETURN(engine_, Engine::Start(backend_.get(), model_.tokenizer.get(), limits));
  RegistryOptions ro;
  ro.resident_budget_bytes = c.engine.memory.resident_contexts_mb << 20;
  ro.max_context_tokens = c.server.limits.max_context_tokens > 0
                              ? std::min<int64_t>(c.server.limits.max_context_tokens, mc.max_positions)
                              : mc.max_positions;
  ro.model = IdentifyModel(*model_.model, model_.fingerprint);
  ro.loader_threads = static_cast<int>(c.server.limits.context_loader_threads);
  ro.max_load_wait = std::chrono::milliseconds(
      static_cast<int64_t>(c.server.limits.context_load_wait_s * 1000.0));
  registry_ = std::make_unique<Registry>(store_.get(), engine_.get(), ro, registry_metrics_);
  SQZ_RETURN_IF_ERROR(registry_->Start());
  state_.model = &model_;
  state_.engine = engine_.get();
  state_.registry = registry_.get();
  state_.ready.store(true);
  server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("model {} loaded ({}, {} layers, fingerprint {}) in {:.1f} s; KV pool {} blocks; "
               "ready", model_.name, model_.format, mc.layers, FingerprintHex(model_.fingerprint),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               blocks);
  return OkStatus();
}

void Daemon::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (!server_) return;
  state_.draining.store(true);
  server_->GetHealthCheckService()->SetServingStatus(false);
  if (engine_) engine_->StopAccepting();
  // Requests still waiting for their context to be loaded would be refused by the engine now.
  if (state_.ready.load()) {
    registry_->StopAcquiring(
        UnavailableError("the server is shutting down; retry on another replica"));
  }
  // Drain: let open streams finish until the deadline, then end them with UNAVAILABLE.
  while (state_.streams_in_flight.load() > 0 && std::chrono::system_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (state_.streams_in_flight.load() > 0 && engine_) {
    spdlog::warn("drain timeout: ending {} streams with UNAVAILABLE",
                 state_.streams_in_flight.load());
    engine_->CancelAll(UnavailableError("the server is shutting down; retry on another replica"));
  }
  server_->GetHealthCheckService()->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

void Daemon::Wait() {
  if (server_) server_->Wait();
}

}  // namespace sqz
