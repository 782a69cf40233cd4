#include "server/metrics.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

namespace sqz::metrics {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

std::string FormatLabels(const Registry::Labels& labels, const std::string& extra = "") {
  std::string out;
  for (const auto& [k, v] : labels) {
    out += (out.empty() ? "" : ",") + k + "=\"";
    for (char c : v) {
      if (c == '"' || c == '\\') out += '\\';
      if (c == '\n') {
        out += "\\n";
        continue;
      }
      out += c;
    }
    out += "\"";
  }
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

}  // namespace

void Counter::Inc(double v) { AtomicAdd(value_, v); }
void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    acc += counts_[i].load(std::memory_order_relaxed);
    out[i] = acc;
  }
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

Registry::Family& Registry::GetFamily(const std::string& name, const std::string& help,
                                      const std::string& type) {
  for (auto& f : families_) {
    if (f->name == name) return *f;
  }
  families_.push_back(std::make_unique<Family>());
  families_.back()->name = name;
  families_.back()->help = help;
  families_.back()->type = type;
  return *families_.back();
}

Counter* Registry::AddCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& f = GetFamily(name, help, "counter");
  f.counters.emplace_back(labels, std::make_unique<Counter>());
  return f.counters.back().second.get();
}

Gauge* Registry::AddGauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& f = GetFamily(name, help, "gauge");
  f.gauges.emplace_back(labels, std::make_unique<Gauge>());
  return f.gauges.back().second.get();
}

Histogram* Registry::AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> bounds, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& f = GetFamily(name, help, "histogram");
  f.histograms.emplace_back(labels, std::make_unique<Histogram>(std::move(bounds)));
  return f.histograms.back().second.get();
}

std::string Registry::Render() const {
  if (collector_) collector_();
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& f : families_) {
    out += "# HELP " + f->name + " " + f->help + "\n# TYPE " + f->name + " " + f->type + "\n";
    for (const auto& [labels, c] : f->counters) {
      out += f->name + FormatLabels(labels) + " " + FormatValue(c->value()) + "\n";
    }
    for (const auto& [labels, g] : f->gauges) {
      out += f->name + FormatLabels(labels) + " " + FormatValue(g->value()) + "\n";
    }
    for (const auto& [labels, h] : f->histograms) {
      const auto counts = h->CumulativeCounts();
      for (size_t i = 0; i < counts.size(); ++i) {
        const double le = i < h->bounds().size() ? h->bounds()[i] : INFINITY;
        out += f->name + "_bucket" + FormatLabels(labels, "le=\"" + FormatValue(le) + "\"") + " " +
               std::to_string(counts[i]) + "\n";
      }
      out += f->name + "_sum" + FormatLabels(labels) + " " + FormatValue(h->sum()) + "\n";
      out += f->name + "_count" + FormatLabels(labels) + " " + std::to_string(counts.back()) + "\n";
    }
  }
  return out;
}

StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& address,
                                                            const Registry* registry) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("metrics address must be host:port, got '" + address + "'");
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res) != 0 ||
      !res) {
    return InvalidArgumentError("cannot resolve metrics address '" + address + "'");
  }
  std::unique_ptr<HttpEndpoint> ep(new HttpEndpoint());
  ep->registry_ = registry;
  ep->listen_fd_ = socket(res->ai_family, SOCK_STREAM, 0);
  const int one = 1;
  setsockopt(ep->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = ep->listen_fd_ >= 0 && bind(ep->listen_fd_, res->ai_addr, res->ai_addrlen) == 0 &&
                     listen(ep->listen_fd_, 16) == 0;
  freeaddrinfo(res);
  if (!bound) {
    return UnavailableError("cannot listen on metrics address " + address + ": " +
                            std::strerror(errno));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(ep->listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  ep->port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (pipe(ep->wake_fd_) != 0) return InternalError("pipe() failed for the metrics endpoint");
  ep->thread_ = std::thread([p = ep.get()] { p->Serve(); });
  pthread_setname_np(ep->thread_.native_handle(), "metrics-http");
  return ep;
}

HttpEndpoint::~HttpEndpoint() {
  if (thread_.joinable()) {
    const char c = 'x';
    (void)!write(wake_fd_[1], &c, 1);
    thread_.join();
  }
  for (int fd : {listen_fd_, wake_fd_[0], wake_fd_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void HttpEndpoint::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    // Read the request head (bounded: 8 KiB, 2 s), answer, close.
    std::string req;
    char buf[1024];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 2000) <= 0) break;
      const ssize_t n = read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      req.append(buf, n);
    }
    std::string status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8", body;
    if (req.rfind("GET /metrics", 0) == 0) {
      body = registry_->Render();
    } else if (req.rfind("GET /healthz", 0) == 0) {
      body = "ok\n";
    } else {
      status = "404 Not Found";
      body = "only GET /metrics and GET /healthz are served\n";
    }
    const std::string resp = "HTTP/1.0 " + status + "\r\nContent-Type: " + type +
                             "\r\nContent-Length: " + std::to_string(body.size()) +
                             "\r\nConnection: close\r\n\r\n" + body;
    size_t off = 0;
    while (off < resp.size()) {
      const ssize_t n = write(fd, resp.data() + off, resp.size() - off);
      if (n <= 0) break;
      off += n;
    }
    close(fd);
  }
}

}  // namespace sqz::metrics
