// The span loops built for AVX2+FMA (ATen's 256-bit Vectorized), used only on CPUs that report
// both. The memory-bound update runs compute-bound with the generic vector type; this build
// brings it to memory speed.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
// The target pragma enables the instructions but not the feature macros that ATen's and SLEEF's
// headers test, so they are set here for this file only.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "leadfl_cpu_spans.h"

namespace leadfl {
SpanKernels span_kernels_avx2() { return AVX2::span_kernels(); }
}  // namespace leadfl
#else
#include "leadfl_cpu_spans_table.h"

namespace leadfl {
SpanKernels span_kernels_avx2() { return span_kernels_default(); }
}  // namespace leadfl
#endif
