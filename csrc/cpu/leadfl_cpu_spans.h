// Vectorised inner loops of the CPU kernels over one contiguous span, written once with ATen's
// Vectorized<T> and compiled once per instruction set (see leadfl_cpu_spans_*.cpp): the
// including file sets CPU_CAPABILITY (and CPU_CAPABILITY_AVX2 for the AVX2 build), which also
// names the namespace, so the builds do not collide. Includes no ATen.h on purpose: only the
// vector headers are compiled for a wider instruction set.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "../leadfl_math.h"
#include "leadfl_cpu_spans_table.h"

namespace leadfl {
namespace CPU_CAPABILITY {

template <typename T>
struct VecClamp {
  using Vec = at::vec::Vectorized<T>;
  // clamp(x, lo, hi) = min(max(x, lo), hi) with x as the operand passed through on NaN, so a NaN
  // element stays NaN as in the scalar path (checked by the NaN tests).
  Vec operator()(const Vec& x, const Vec& lo, const Vec& hi) const { return at::vec::clamp(x, lo, hi); }
};

template <typename T>
Coefficients<at::vec::Vectorized<T>> splat(const Coefficients<T>& c) {
  using Vec = at::vec::Vectorized<T>;
  return Coefficients<Vec>{Vec(c.one), Vec(c.lr), Vec(c.lr_alpha), Vec(c.q), Vec(c.neg_q)};
}

// hessian: w <- f(w, g, g~) over n elements.
template <typename T>
void hessian_span(T* w, const T* g, const T* gl, int64_t n, const Coefficients<T>& c) {
  using Vec = at::vec::Vectorized<T>;
  const Coefficients<Vec> cv = splat(c);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec out = hessian_update(Vec::loadu(w + i), Vec::loadu(g + i), Vec::loadu(gl + i), cv, VecClamp<T>{});
    out.store(w + i);
  }
  for (; i < n; ++i) w[i] = hessian_update(w[i], g[i], gl[i], c, ScalarClamp{});
}

// paper: (w, d) <- f(w, g, d) over n elements.
template <typename T>
void paper_span(T* w, const T* g, T* d, int64_t n, const Coefficients<T>& c) {
  using Vec = at::vec::Vectorized<T>;
  const Coefficients<Vec> cv = splat(c);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec wv = Vec::loadu(w + i);
    Vec dv = Vec::loadu(d + i);
    paper_update(wv, Vec::loadu(g + i), dv, cv, VecClamp<T>{});
    wv.store(w + i);
    dv.store(d + i);
  }
  for (; i < n; ++i) paper_update(w[i], g[i], d[i], c, ScalarClamp{});
}

inline SpanKernels span_kernels() {
  return SpanKernels{&hessian_span<float>, &hessian_span<double>, &paper_span<float>, &paper_span<double>};
}

}  // namespace CPU_CAPABILITY
}  // namespace leadfl
