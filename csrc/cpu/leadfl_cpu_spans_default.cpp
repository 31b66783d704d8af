// The span loops for any x86-64 (or other) CPU, and the runtime choice between builds.
#include <cstdlib>
#include <cstring>

#include "leadfl_cpu_spans.h"

namespace leadfl {

SpanKernels span_kernels_default() { return CPU_CAPABILITY::span_kernels(); }

namespace {
// LEADFL_CPU_ISA=default forces the portable build (how the tests cover it on AVX2 machines).
bool use_avx2() {
  const char* forced = std::getenv("LEADFL_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "default") == 0) return false;
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

const SpanKernels& span_kernels_for_this_cpu() {
  static const SpanKernels table = use_avx2() ? span_kernels_avx2() : span_kernels_default();
  return table;
}

const char* span_kernels_name() {
  static const bool avx2 = use_avx2();
  return avx2 ? "avx2" : "default";
}

}  // namespace leadfl
