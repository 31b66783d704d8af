// The per-span CPU loops as a table of function pointers, one table per instruction set.
#pragma once

#include <cstdint>

#include "../leadfl_math.h"

namespace leadfl {

struct SpanKernels {
  void (*hessian_f32)(float*, const float*, const float*, int64_t, const Coefficients<float>&);
  void (*hessian_f64)(double*, const double*, const double*, int64_t, const Coefficients<double>&);
  void (*paper_f32)(float*, const float*, float*, int64_t, const Coefficients<float>&);
  void (*paper_f64)(double*, const double*, double*, int64_t, const Coefficients<double>&);
};

SpanKernels span_kernels_default();
// The AVX2+FMA build where the compiler supports it, otherwise the default one.
SpanKernels span_kernels_avx2();
// The table for the CPU this runs on, chosen once.
const SpanKernels& span_kernels_for_this_cpu();
const char* span_kernels_name();

}  // namespace leadfl
