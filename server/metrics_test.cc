#include "server/metrics.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <thread>

namespace sqz::metrics {
namespace {

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  const std::string req = "GET " + path + " HTTP/1.0\r\n\r\n";
  REQUIRE(write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
  close(fd);
  return out;
}

TEST_CASE("registry renders counters, gauges and cumulative histograms") {
  Registry r;
  auto* c = r.AddCounter("sqz_requests_total", "Requests.", {{"code", "OK"}});
  auto* g = r.AddGauge("sqz_queue_depth", "Queued requests.");
  auto* h = r.AddHistogram("sqz_ttft_seconds", "TTFT.", {0.1, 1.0});
  c->Inc();
  c->Inc(2);
  g->Set(5);
  g->Add(-2);
  h->Observe(0.05);
  h->Observe(0.5);
  h->Observe(7);
  const std::string text = r.Render();
  CHECK(text.find("# TYPE sqz_requests_total counter\nsqz_requests_total{code=\"OK\"} 3\n") !=
        std::string::npos);
  CHECK(text.find("sqz_queue_depth 3\n") != std::string::npos);
  CHECK(text.find("sqz_ttft_seconds_bucket{le=\"0.10000000000000001\"} 1\n") != std::string::npos);
  CHECK(text.find("sqz_ttft_seconds_bucket{le=\"1\"} 2\n") != std::string::npos);
  CHECK(text.find("sqz_ttft_seconds_bucket{le=\"+Inf\"} 3\n") != std::string::npos);
  CHECK(text.find("sqz_ttft_seconds_count 3\n") != std::string::npos);
  CHECK(text.find("sqz_ttft_seconds_sum 7.5499999999999998\n") != std::string::npos);
}

TEST_CASE("counters are safe to update from many threads") {
  Registry r;
  auto* c = r.AddCounter("x_total", "x");
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([c] {
      for (int i = 0; i < 10000; ++i) c->Inc();
    });
  }
  for (auto& t : ts) t.join();
  CHECK(c->value() == 40000);
}

TEST_CASE("the HTTP endpoint serves /metrics and 404 elsewhere") {
  Registry r;
  r.AddCounter("sqz_up_total", "Up.")->Inc();
  auto ep = HttpEndpoint::Start("127.0.0.1:0", &r);
  REQUIRE(ep.ok());
  const std::string ok = HttpGet((*ep)->port(), "/metrics");
  CHECK(ok.rfind("HTTP/1.0 200 OK", 0) == 0);
  CHECK(ok.find("sqz_up_total 1") != std::string::npos);
  CHECK(HttpGet((*ep)->port(), "/nope").rfind("HTTP/1.0 404", 0) == 0);
  // A second endpoint on the same port fails with a clear error.
  auto again = HttpEndpoint::Start("127.0.0.1:" + std::to_string((*ep)->port()), &r);
  CHECK(again.status().code() == StatusCode::kUnavailable);
  CHECK(HttpEndpoint::Start("nocolon", &r).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqz::metrics
