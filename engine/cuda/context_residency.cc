#include "engine/cuda/context_residency.h"

#include <cstdlib>
#include <iostream>

namespace sqz {
namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "ContextResidency: broken invariant: " << what << "\n";
    std::abort();
  }
}

}  // namespace

StatusOr<std::vector<ContextResidency::Key>> ContextResidency::PlanAdmission(
    Key key, int64_t bytes, const std::string& what) const {
  if (Contains(key)) {
    return InvalidArgumentError("ContextResidency: " + what + " is already resident");
  }
  if (bytes > budget_bytes_) {
    return ResourceExhaustedError(what + " needs " + std::to_string(bytes) +
                                  " bytes of device memory, above the whole GPU context budget "
                                  "of " +
                                  std::to_string(budget_bytes_) +
                                  " bytes (raise engine.model.cuda.context_memory_gb or use a "
                                  "shorter context)");
  }
  std::vector<Key> evict;
  int64_t free_bytes = budget_bytes_ - used_bytes_;
  for (Key k : lru_) {
    if (free_bytes >= bytes) break;
    const Entry& e = entries_.at(k);
    if (e.refs > 0) continue;
    evict.push_back(k);
    free_bytes += e.bytes;
  }
  if (free_bytes < bytes) {
    int64_t in_use = 0;
    for (const auto& [k, e] : entries_) in_use += e.refs > 0 ? e.bytes : 0;
    return ResourceExhaustedError(what + " needs " + std::to_string(bytes) +
                                  " bytes of device memory but contexts in use by running "
                                  "requests hold " +
                                  std::to_string(in_use) + " of the " +
                                  std::to_string(budget_bytes_) +
                                  "-byte GPU context budget; retry when they finish");
  }
  return evict;
}

void ContextResidency::Insert(Key key, int64_t bytes) {
  Check(!Contains(key), "Insert of a resident key");
  Check(bytes >= 0 && used_bytes_ + bytes <= budget_bytes_, "Insert beyond the budget");
  lru_.push_back(key);
  entries_[key] = Entry{bytes, 0, std::prev(lru_.end())};
  used_bytes_ += bytes;
}

void ContextResidency::Erase(Key key) {
  auto it = entries_.find(key);
  Check(it != entries_.end(), "Erase of an unknown key");
  Check(it->second.refs == 0, "Erase of a context in use");
  used_bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  ++evictions_;
}

void ContextResidency::Touch(Key key) {
  auto it = entries_.find(key);
  Check(it != entries_.end(), "Touch of an unknown key");
  lru_.splice(lru_.end(), lru_, it->second.lru);
}

void ContextResidency::Acquire(Key key) {
  auto it = entries_.find(key);
  Check(it != entries_.end(), "Acquire of an unknown key");
  ++it->second.refs;
}

void ContextResidency::Release(Key key) {
  auto it = entries_.find(key);
  Check(it != entries_.end(), "Release of an unknown key");
  Check(it->second.refs > 0, "Release below zero");
  --it->second.refs;
}

int64_t ContextResidency::refs(Key key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second.refs;
}

}  // namespace sqz
