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

namespace internal {

// Where a CudaRegion's bytes come from.
struct DeviceAllocator {
  static constexpr const char* kName = "cudaMalloc";
  static cudaError_t Allocate(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
  static void Free(void* p) { cudaFree(p); }
};
struct PinnedAllocator {
  static constexpr const char* kName = "cudaMallocHost";
  static cudaError_t Allocate(void** p, size_t bytes) { return cudaMallocHost(p, bytes); }
  static void Free(void* p) { cudaFreeHost(p); }
};

template <typename Allocator>
class CudaRegion {
 public:
  CudaRegion() = default;
  ~CudaRegion() { Reset(); }
  CudaRegion(CudaRegion&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  CudaRegion& operator=(CudaRegion&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  CudaRegion(const CudaRegion&) = delete;
  CudaRegion& operator=(const CudaRegion&) = delete;

  // RESOURCE_EXHAUSTED naming `what` when there is no room; 0 bytes gives a null region.
  static StatusOr<CudaRegion> Allocate(size_t bytes, const std::string& what) {
    CudaRegion m;
    if (bytes == 0) return m;
    const cudaError_t err = Allocator::Allocate(&m.ptr_, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the error state of a failed allocation
      return ResourceExhaustedError(std::string(Allocator::kName) + " of " + std::to_string(bytes) +
                                    " bytes for " + what + " failed: " + cudaGetErrorString(err));
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
    if (ptr_) Allocator::Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace internal

using DeviceMemory = internal::CudaRegion<internal::DeviceAllocator>;
using PinnedMemory = internal::CudaRegion<internal::PinnedAllocator>;

}  // namespace sqz
