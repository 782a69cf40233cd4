// ContextResidency: the bookkeeping of the CUDA backend's resident fixed contexts
// (device_context.h) without the device: which contexts are resident, how many live sequences use
// each (reference counts), their bytes against a memory budget, and which unused ones to evict,
// least recently used first, to make room for a new one.
//
// Keys are the identities of the contexts (the address of their ContextSnapshot); the caller keeps
// the device copies and asks this class what to do. Pure host code, tested without a GPU.
// Ownership: holds no pointers it dereferences. Thread safety: not thread-safe (the backend's
// thread owns it).
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace sqz {

class ContextResidency {
 public:
  using Key = const void*;

  // budget_bytes >= 0: the most device bytes resident contexts may hold together.
  explicit ContextResidency(int64_t budget_bytes) : budget_bytes_(budget_bytes) {}

  ContextResidency(const ContextResidency&) = delete;
  ContextResidency& operator=(const ContextResidency&) = delete;

  bool Contains(Key key) const { return entries_.count(key) != 0; }
  // Keys to evict (unreferenced, least recently used first) so that a new context of `bytes` fits
  // the budget; nothing changes. RESOURCE_EXHAUSTED, naming `what`, the bytes asked for, the budget
  // and the bytes held by contexts in use, when even evicting every unused context does not make
  // room. INVALID_ARGUMENT when `key` is already resident.
  StatusOr<std::vector<Key>> PlanAdmission(Key key, int64_t bytes, const std::string& what) const;
  // Records a resident context (after the caller evicted what PlanAdmission said). The caller
  // guarantees it fits: used_bytes() + bytes <= budget_bytes() (checked).
  void Insert(Key key, int64_t bytes);
  // Forgets an unreferenced resident context (checked).
  void Erase(Key key);
  // Marks `key` most recently used.
  void Touch(Key key);
  // A live sequence starts / stops using `key` (checked: resident; Release below zero is a bug).
  void Acquire(Key key);
  void Release(Key key);

  int64_t refs(Key key) const;  // 0 for an unknown key
  int64_t used_bytes() const { return used_bytes_; }
  int64_t budget_bytes() const { return budget_bytes_; }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  int64_t evictions() const { return evictions_; }
  // Resident keys, least recently used first.
  std::vector<Key> LruOrder() const { return {lru_.begin(), lru_.end()}; }

 private:
  struct Entry {
    int64_t bytes = 0;
    int64_t refs = 0;
    std::list<Key>::iterator lru;  // position in lru_
  };
  const int64_t budget_bytes_;
  int64_t used_bytes_ = 0;
  int64_t evictions_ = 0;
  std::list<Key> lru_;  // least recently used first
  std::unordered_map<Key, Entry> entries_;
};

}  // namespace sqz
