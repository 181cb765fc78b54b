// Phase timers on the GPU's clock: each phase is a pair of CUDA events recorded
// on the stream, resolved later without waiting when they are done (or waiting,
// at the end of a run), so timing adds no synchronisation to a step. The events
// come from a pool made once.
#pragma once
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/layers/cuda/layers.h"
#include "glam/base/timers.h"

namespace glam::cuda {

class PhaseEvents {
 public:
  explicit PhaseEvents(cudaStream_t stream, int pairs = 256) : stream_(stream) {
    for (int i = 0; i < 2 * pairs; i++) {
      cudaEvent_t e;
      GLAM_CHECK_CUDA(cudaEventCreate(&e));
      free_.push_back(e);
    }
  }
  ~PhaseEvents() {
    for (Pending& p : pending_) { GLAM_WARN_CUDA(cudaEventDestroy(p.start)); GLAM_WARN_CUDA(cudaEventDestroy(p.end)); }
    for (Pending& p : open_) { GLAM_WARN_CUDA(cudaEventDestroy(p.start)); }
    for (cudaEvent_t e : free_) GLAM_WARN_CUDA(cudaEventDestroy(e));
  }
  PhaseEvents(const PhaseEvents&) = delete;
  PhaseEvents& operator=(const PhaseEvents&) = delete;

  void begin(const char* name) {
    if (free_.size() < 2) drain();
    Pending p{name, take(), nullptr};
    GLAM_CHECK_CUDA(cudaEventRecord(p.start, stream_));
    open_.push_back(p);
  }
  void end(const char* name) {
    GLAM_ASSERT(!open_.empty() && open_.back().name == name);
    Pending p = open_.back();
    open_.pop_back();
    p.end = take();
    GLAM_CHECK_CUDA(cudaEventRecord(p.end, stream_));
    pending_.push_back(p);
  }
  // Adds every finished phase to timers, in order; wait: also the unfinished ones.
  void collect(PhaseTimers& timers, bool wait) {
    size_t done = 0;
    for (; done < pending_.size(); done++) {
      Pending& p = pending_[done];
      if (wait) GLAM_CHECK_CUDA(cudaEventSynchronize(p.end));
      else {
        const cudaError_t state = cudaEventQuery(p.end);
        if (state == cudaErrorNotReady) break;
        GLAM_CHECK_CUDA(state);
      }
      float ms = 0.0f;
      GLAM_CHECK_CUDA(cudaEventElapsedTime(&ms, p.start, p.end));
      timers.add(p.name, ms / 1000.0);
      free_.push_back(p.start);
      free_.push_back(p.end);
    }
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(done));
    collected_ = &timers;
  }

 private:
  struct Pending {
    std::string name;
    cudaEvent_t start, end;
  };
  cudaEvent_t take() {
    cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  // The pool ran out before anyone collected: resolve into the last timers seen.
  void drain() {
    static PhaseTimers lost;
    collect(collected_ ? *collected_ : lost, true);
  }
  cudaStream_t stream_;
  std::vector<cudaEvent_t> free_;
  std::vector<Pending> open_, pending_;
  PhaseTimers* collected_ = nullptr;
};

}  // namespace glam::cuda
