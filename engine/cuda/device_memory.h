// DeviceMemory: one cudaMalloc'd region (RAII), and PinnedMemory: one cudaMallocHost'd region.
// Ownership: each owns its bytes and frees them on destruction; move-only.
// Thread safety: none needed (no shared state); use from the thread that owns the backend.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace sqz {

class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory() { Reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // RESOURCE_EXHAUSTED naming `what` when the device has no room; 0 bytes gives a null region.
  static StatusOr<DeviceMemory> Allocate(size_t bytes, const std::string& what) {
    DeviceMemory m;
    if (bytes == 0) return m;
    const cudaError_t err = cudaMalloc(&m.ptr_, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      return ResourceExhaustedError("cudaMalloc of " + std::to_string(bytes) + " bytes for " +
                                    what + " failed: " + cudaGetErrorString(err));
    }
    m.bytes_ = bytes;
    return m;
  }

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void Reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class PinnedMemory {
 public:
  PinnedMemory() = default;
  ~PinnedMemory() { Reset(); }
  PinnedMemory(PinnedMemory&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedMemory& operator=(PinnedMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  PinnedMemory(const PinnedMemory&) = delete;
  PinnedMemory& operator=(const PinnedMemory&) = delete;

  static StatusOr<PinnedMemory> Allocate(size_t bytes, const std::string& what) {
    PinnedMemory m;
    if (bytes == 0) return m;
    const cudaError_t err = cudaMallocHost(&m.ptr_, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return ResourceExhaustedError("cudaMallocHost of " + std::to_string(bytes) + " bytes for " +
                                    what + " failed: " + cudaGetErrorString(err));
    }
    m.bytes_ = bytes;
    return m;
  }

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void Reset() {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace sqz
