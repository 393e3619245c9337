// libtorch's own profiler (Kineto, with CUPTI on CUDA) around a stretch of work, written as a
// Chrome trace: every aten operator the host ran and every GPU kernel it launched, with their
// times and the link between the two. tch binds no profiler, so these two calls are made here.
// It answers where a training step's device time goes kernel by kernel, which CUDA events
// around whole layers (`PSPACE_TRAIN_PROFILE=ops`) cannot.
//
// No C++ exception may unwind into Rust: every failure comes back as a message the caller
// frees with pspace_free_message (flash_varlen.cpp).
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <set>
#include <string>

namespace {
namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

std::set<impl::ActivityType> activities(bool cuda) {
  std::set<impl::ActivityType> set{impl::ActivityType::CPU};
  if (cuda) set.insert(impl::ActivityType::CUDA);
  return set;
}
}  // namespace

extern "C" {

// Starts recording operators (and CUDA kernels when `cuda` is non-zero). Null on success.
char* pspace_kernel_trace_start(int cuda) {
  try {
    impl::ProfilerConfig config(impl::ProfilerState::KINETO, /*report_input_shapes=*/true);
    prof::prepareProfiler(config, activities(cuda != 0));
    prof::enableProfiler(config, activities(cuda != 0));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception starting the profiler");
  }
}

// Stops recording and writes the Chrome trace to `path`. Null on success.
char* pspace_kernel_trace_stop(const char* path) {
  try {
    std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
    if (!result) return strdup("the profiler returned no result (was it started?)");
    result->save(std::string(path));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception stopping the profiler");
  }
}

}  // extern "C"
