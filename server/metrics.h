// Prometheus metrics: counters, gauges and histograms in one registry, rendered in the Prometheus
// text exposition format (version 0.0.4), and a small HTTP endpoint that serves GET /metrics.
//
// Metric objects are created once at start (Registry owns them; the returned pointers stay valid
// for the registry's lifetime) and updated lock-free from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace sqz::metrics {

class Counter {
 public:
  void Inc(double v = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // sorted, +Inf implied
  void Observe(double v);
  // Cumulative counts per bound (the last is +Inf), sum and count.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // [bounds.size() + 1]
  std::atomic<double> sum_{0.0};
};

// Owns every metric. Names follow Prometheus rules; labels are fixed at creation
// ("code=\"OK\"" style strings are built by the caller through the labels map).
class Registry {
 public:
  using Labels = std::map<std::string, std::string>;
  Counter* AddCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge* AddGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds, const Labels& labels = {});
  // The whole registry in the text exposition format (after running the collector, if any).
  std::string Render() const;
  // Called at the start of every Render, e.g. to refresh gauges from engine stats. Set once.
  void SetCollector(std::function<void()> collector) { collector_ = std::move(collector); }

 private:
  struct Family {
    std::string name, help, type;
    std::vector<std::pair<Labels, std::unique_ptr<Counter>>> counters;
    std::vector<std::pair<Labels, std::unique_ptr<Gauge>>> gauges;
    std::vector<std::pair<Labels, std::unique_ptr<Histogram>>> histograms;
  };
  Family& GetFamily(const std::string& name, const std::string& help, const std::string& type);
  std::function<void()> collector_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family>> families_;  // GUARDED_BY(mu_), in creation order
};

// Latency buckets in seconds for TTFT and inter-token latency.
std::vector<double> LatencyBuckets();

// Serves GET /metrics (and GET /healthz) over HTTP/1.0 on one thread named "metrics-http".
class HttpEndpoint {
 public:
  // Borrows `registry`, which must outlive the endpoint. "host:port"; port 0 picks one.
  static StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& address,
                                                       const Registry* registry);
  ~HttpEndpoint();  // stops the thread
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;
  int port() const { return port_; }

 private:
  HttpEndpoint() = default;
  void Serve();
  const Registry* registry_ = nullptr;
  int listen_fd_ = -1;
  int wake_fd_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
};

}  // namespace sqz::metrics
