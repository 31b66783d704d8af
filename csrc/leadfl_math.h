// Per-element maths of the LeadFL client update (SPEC §1.1 and §1.2).
//
// This header is the single definition of the arithmetic. The CPU kernel instantiates it with
// scalars and with ATen's Vectorized<T>; the CUDA kernel instantiates it with float/double in
// device code. It includes nothing from torch so plain nvcc can compile it.
#pragma once

#if defined(__CUDACC__)
#define LEADFL_HD __host__ __device__ __forceinline__
#else
#define LEADFL_HD inline
#endif

namespace leadfl {

// Clamp for scalars. Comparisons with NaN are false, so a NaN input comes out as NaN
// (std::clamp would be undefined behaviour and fminf/fmaxf would drop the NaN).
struct ScalarClamp {
  template <typename T>
  LEADFL_HD T operator()(T x, T lo, T hi) const {
    return x < lo ? lo : (x > hi ? hi : x);
  }
};

// Coefficients shared by every element of one row (one alpha).
template <typename T>
struct Coefficients {
  T one;       // 1; for hessian_update the constant c (1: hessian, 0: curvature)
  T lr;        // eta
  T lr_alpha;  // eta * alpha
  T q;         // clip threshold, q > 0
  T neg_q;     // -q
};

// `hessian` variant (SPEC §1.1), and with c.one = 0 the `curvature` ablation (§1.5):
//   R = clamp(c - (g~ - g), -q, q);  W <- W - eta*g - eta*alpha*R
template <typename T, typename Clamp>
LEADFL_HD T hessian_update(T w, T g, T g_lookahead, const Coefficients<T>& c, Clamp clamp) {
  const T r = clamp(c.one - (g_lookahead - g), c.neg_q, c.q);
  return w - c.lr * g - c.lr_alpha * r;
}

// `paper` variant (SPEC §1.2), D = the previous local step's total change:
//   W~ = W - eta*g;  R = clamp(1 - eta*g - D, -q, q);  W' = W~ - eta*alpha*R;  D <- W' - W
// Writes the new W and D through the references.
template <typename T, typename Clamp>
LEADFL_HD void paper_update(T& w, T g, T& d, const Coefficients<T>& c, Clamp clamp) {
  const T step = c.lr * g;
  const T r = clamp(c.one - step - d, c.neg_q, c.q);
  const T w_new = (w - step) - c.lr_alpha * r;
  d = w_new - w;
  w = w_new;
}

}  // namespace leadfl
