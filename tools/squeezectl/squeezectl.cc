// squeezectl: command-line client of squeezed.
//
//   squeezectl [--server ADDR] [--api-key KEY] [--tls-ca FILE] COMMAND ...
//   info | health | create ID FILE [--wait] | get ID | list [--state S] | watch ID | delete ID |
//   generate [--context ID] PROMPT [-n N] [--temperature T] [--dense | --budget B] |
//   tokenize TEXT | detokenize ID...
//
// Every call sends the context id (when there is one) in the x-squeeze-context header, so a
// consistent-hashing proxy routes it to the replica that holds the context.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "squeeze/v1/context_service.grpc.pb.h"
#include "squeeze/v1/generation_service.grpc.pb.h"

namespace v1 = squeeze::v1;

namespace {

struct Client {
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;

  std::unique_ptr<grpc::ClientContext> Context(const std::string& context_id = "",
                                               double timeout_s = 0) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key);
    if (!context_id.empty()) ctx->AddMetadata("x-squeeze-context", context_id);
    if (timeout_s > 0) {
      ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
    }
    return ctx;
  }
};

int Report(const grpc::Status& s) {
  if (s.ok()) return 0;
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int code = s.error_code();
  std::fprintf(stderr, "squeezectl: %s: %s\n", code >= 0 && code <= 16 ? kNames[code] : "?",
               s.error_message().c_str());
  return 2;
}

std::string Name(const std::string& id) {
  return id.rfind("contexts/", 0) == 0 ? id : "contexts/" + id;
}

std::string Id(const std::string& name) {
  return name.rfind("contexts/", 0) == 0 ? name.substr(9) : name;
}

void PrintContext(const v1::Context& c) {
  std::printf("%s  %s  progress %.0f%%  tokens %llu  stored %.1f MiB%s%s\n", c.name().c_str(),
              v1::ContextState_Name(c.state()).c_str(), c.progress() * 100.0,
              static_cast<unsigned long long>(c.token_count()), c.stored_bytes() / 1048576.0,
              c.resident() ? "  resident" : "", c.error().empty() ? "" : ("  error: " + c.error()).c_str());
}

// Streams WatchContext with a one-line progress bar; returns the final state.
int Watch(const Client& client, const std::string& id, bool quiet_until_done) {
  auto stub = v1::ContextService::NewStub(client.channel);
  auto ctx = client.Context(id);
  v1::WatchContextRequest req;
  req.set_name(Name(id));
  auto reader = stub->WatchContext(ctx.get(), req);
  v1::Context c;
  bool any = false;
  while (reader->Read(&c)) {
    any = true;
    const int width = 30;
    const int filled = static_cast<int>(c.progress() * width);
    std::fprintf(stderr, "\r%-12s [%s%s] %3.0f%%", v1::ContextState_Name(c.state()).c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 c.progress() * 100.0);
    std::fflush(stderr);
  }
  if (any) std::fprintf(stderr, "\n");
  const int rc = Report(reader->Finish());
  if (rc != 0) return rc;
  if (any && !quiet_until_done) PrintContext(c);
  return c.state() == v1::READY ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"squeezectl: client of the squeezed gRPC server"};
  app.require_subcommand(1);
  std::string server = "127.0.0.1:50051", api_key, tls_ca;
  double timeout_s = 0;
  app.add_option("-s,--server", server, "squeezed address host:port")->envname("SQUEEZE_SERVER");
  app.add_option("--api-key", api_key, "API key (sent as a bearer token)")->envname("SQUEEZE_API_KEY");
  app.add_option("--tls-ca", tls_ca, "Use TLS, trusting this CA bundle (PEM)");
  app.add_option("--timeout", timeout_s, "Deadline of each call in seconds (0: none)");

  auto* info = app.add_subcommand("info", "Print the server's model, backend and limits");
  auto* create = app.add_subcommand("create", "Register a context from a text file");
  std::string id, file;
  bool wait = false, pin = false;
  create->add_option("id", id, "Context id ([a-z0-9-_.]; '' lets the server choose)")->required();
  create->add_option("file", file, "UTF-8 text file ('-' for stdin)")->required();
  create->add_flag("--wait", wait, "Show a progress bar until the context is READY or FAILED");
  create->add_flag("--pin", pin, "Keep the context resident in memory");
  auto* get = app.add_subcommand("get", "Show one context");
  get->add_option("id", id)->required();
  auto* list = app.add_subcommand("list", "List contexts");
  std::string state;
  list->add_option("--state", state, "Only contexts in this state (READY, FAILED, ...)");
  auto* watch = app.add_subcommand("watch", "Follow a context's ingestion until READY or FAILED");
  watch->add_option("id", id)->required();
  auto* del = app.add_subcommand("delete", "Delete a context and everything stored for it");
  del->add_option("id", id)->required();
  auto* gen = app.add_subcommand("generate", "Stream a completion, optionally over a context");
  std::string prompt, context_id;
  int max_tokens = 0, top_k = 0;
  double temperature = 0, top_p = 0, budget = 0;
  bool dense = false, chat = false, hierarchical = false;
  uint64_t seed = 0;
  gen->add_option("prompt", prompt, "Prompt text")->required();
  gen->add_option("-c,--context", context_id, "Context id");
  gen->add_option("-n,--max-tokens", max_tokens, "Tokens to generate at most");
  gen->add_option("-t,--temperature", temperature, "0 = greedy");
  gen->add_option("--top-k", top_k);
  gen->add_option("--top-p", top_p);
  gen->add_option("--seed", seed);
  gen->add_option("--budget", budget, "KV budget of squeezed attention (0..1]");
  gen->add_flag("--dense", dense, "Dense attention over the context");
  gen->add_flag("--hierarchical", hierarchical, "Two-level centroid lookup");
  gen->add_flag("--chat", chat, "Send the prompt as one user chat message");
  auto* tok = app.add_subcommand("tokenize", "Tokenize text with the server's tokenizer");
  std::string text;
  tok->add_option("text", text)->required();
  auto* detok = app.add_subcommand("detokenize", "Turn token ids back into text");
  std::vector<uint32_t> ids;
  detok->add_option("ids", ids)->required();
  CLI11_PARSE(app, argc, argv);

  Client client;
  client.api_key = api_key;
  if (tls_ca.empty()) {
    client.channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  } else {
    std::ifstream in(tls_ca);
    if (!in) {
      std::fprintf(stderr, "squeezectl: cannot read --tls-ca %s\n", tls_ca.c_str());
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ss.str();
    client.channel = grpc::CreateChannel(server, grpc::SslCredentials(ssl));
  }
  auto contexts = v1::ContextService::NewStub(client.channel);
  auto generation = v1::GenerationService::NewStub(client.channel);

  if (*info) {
    v1::ServerInfo out;
    auto ctx = client.Context("", timeout_s);
    if (int rc = Report(generation->GetServerInfo(ctx.get(), {}, &out))) return rc;
    std::printf("squeezed %s, backend %s (%s), ready %s\n", out.version().c_str(),
                out.backend().c_str(), out.devices_size() ? out.devices(0).c_str() : "",
                out.ready() ? "yes" : "no");
    const auto& m = out.model();
    std::printf("model %s (%s): %u layers, hidden %u, %u/%u heads, head_dim %u, vocab %u, "
                "%u positions\n", m.name().c_str(), m.path().c_str(), m.layers(), m.hidden_size(),
                m.query_heads(), m.kv_heads(), m.head_dim(), m.vocab_size(), m.max_positions());
    return 0;
  }
  if (*create) {
    std::stringstream ss;
    if (file == "-") {
      ss << std::cin.rdbuf();
    } else {
      std::ifstream in(file, std::ios::binary);
      if (!in) {
        std::fprintf(stderr, "squeezectl: cannot read %s\n", file.c_str());
        return 2;
      }
      ss << in.rdbuf();
    }
    v1::CreateContextRequest req;
    req.set_context_id(id);
    req.set_text(ss.str());
    req.set_pin(pin);
    v1::Context out;
    auto ctx = client.Context(id, timeout_s);
    if (int rc = Report(contexts->CreateContext(ctx.get(), req, &out))) return rc;
    PrintContext(out);
    return wait ? Watch(client, Id(out.name()), false) : 0;
  }
  if (*get) {
    v1::GetContextRequest req;
    req.set_name(Name(id));
    v1::Context out;
    auto ctx = client.Context(id, timeout_s);
    if (int rc = Report(contexts->GetContext(ctx.get(), req, &out))) return rc;
    PrintContext(out);
    return 0;
  }
  if (*list) {
    v1::ListContextsRequest req;
    if (!state.empty()) {
      v1::ContextState s;
      if (!v1::ContextState_Parse(state, &s)) {
        std::fprintf(stderr, "squeezectl: unknown state %s\n", state.c_str());
        return 2;
      }
      req.set_state_filter(s);
    }
    do {
      v1::ListContextsResponse out;
      auto ctx = client.Context("", timeout_s);
      if (int rc = Report(contexts->ListContexts(ctx.get(), req, &out))) return rc;
      for (const auto& c : out.contexts()) PrintContext(c);
      req.set_page_token(out.next_page_token());
    } while (!req.page_token().empty());
    return 0;
  }
  if (*watch) return Watch(client, id, false);
  if (*del) {
    v1::DeleteContextRequest req;
    req.set_name(Name(id));
    v1::DeleteContextResponse out;
    auto ctx = client.Context(id, timeout_s);
    if (int rc = Report(contexts->DeleteContext(ctx.get(), req, &out))) return rc;
    std::printf("deleted %s\n", Name(id).c_str());
    return 0;
  }
  if (*gen) {
    v1::GenerateRequest req;
    if (!context_id.empty()) req.set_context(Name(context_id));
    if (chat) {
      auto* m = req.mutable_messages()->add_messages();
      m->set_role("user");
      m->set_content(prompt);
    } else {
      req.set_text(prompt);
    }
    auto* s = req.mutable_sampling();
    if (max_tokens > 0) s->set_max_tokens(max_tokens);
    s->set_temperature(static_cast<float>(temperature));
    s->set_top_k(top_k);
    if (top_p > 0) s->set_top_p(static_cast<float>(top_p));
    if (seed) s->set_seed(seed);
    auto* a = req.mutable_attention();
    if (dense) a->set_mode(v1::AttentionOptions::DENSE);
    if (budget > 0) {
      a->set_mode(v1::AttentionOptions::SQUEEZED);
      a->set_policy(v1::AttentionOptions::BUDGET);
      a->set_kv_budget(static_cast<float>(budget));
    }
    a->set_hierarchical(hierarchical);
    auto ctx = client.Context(Id(context_id), timeout_s);
    auto reader = generation->Generate(ctx.get(), req);
    v1::GenerateResponse msg;
    v1::GenerateFinal final_msg;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        std::fputs(msg.chunk().text().c_str(), stdout);
        std::fflush(stdout);
      } else if (msg.has_final()) {
        final_msg = msg.final();
      }
    }
    std::printf("\n");
    if (int rc = Report(reader->Finish())) return rc;
    const auto& u = final_msg.usage();
    const auto& t = final_msg.timings();
    std::fprintf(stderr,
                 "[%s] context %llu + prompt %llu + completion %llu tokens; context keys read "
                 "%.1f%%; time to first token %.3f s; total %.3f s\n",
                 v1::FinishReason_Name(final_msg.finish_reason()).c_str(),
                 static_cast<unsigned long long>(u.context_tokens()),
                 static_cast<unsigned long long>(u.prompt_tokens()),
                 static_cast<unsigned long long>(u.completion_tokens()),
                 u.context_keys_read() * 100.0, t.time_to_first_token_s(), t.total_s());
    return 0;
  }
  if (*tok) {
    v1::TokenizeRequest req;
    req.set_text(text);
    v1::TokenizeResponse out;
    auto ctx = client.Context("", timeout_s);
    if (int rc = Report(generation->Tokenize(ctx.get(), req, &out))) return rc;
    for (int i = 0; i < out.token_ids_size(); ++i) {
      std::printf("%u\t%s\n", out.token_ids(i), i < out.pieces_size() ? out.pieces(i).c_str() : "");
    }
    return 0;
  }
  if (*detok) {
    v1::DetokenizeRequest req;
    for (auto i : ids) req.add_token_ids(i);
    v1::DetokenizeResponse out;
    auto ctx = client.Context("", timeout_s);
    if (int rc = Report(generation->Detokenize(ctx.get(), req, &out))) return rc;
    std::printf("%s\n", out.text().c_str());
    return 0;
  }
  return 0;
}
