// CPU kernels of leadfl::fused_step_ and leadfl::paper_step_: one pass over memory, vectorised
// with ATen's Vectorized<T>, parallel over fixed-size chunks of all tensors with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../leadfl_math.h"

namespace leadfl {
namespace {

// Elements per parallel work item: large enough to amortise scheduling, small enough that a
// 64M-element tensor splits into thousands of items that balance across threads.
constexpr int64_t kChunk = 1 << 15;
// Below this many elements in total, threading costs more than it saves.
constexpr int64_t kParallelThreshold = 1 << 17;

enum class Variant { kHessian, kPaper };

template <typename T>
struct VecClamp {
  using Vec = at::vec::Vectorized<T>;
  // minimum/maximum propagate NaN, so a NaN element stays NaN as in the scalar path.
  Vec operator()(const Vec& x, const Vec& lo, const Vec& hi) const {
    return at::vec::minimum(at::vec::maximum(x, lo), hi);
  }
};

template <typename T>
Coefficients<T> coefficients(double lr, double alpha, double q) {
  return Coefficients<T>{T(1), static_cast<T>(lr), static_cast<T>(lr * alpha), static_cast<T>(q),
                         static_cast<T>(-q)};
}

template <typename T>
at::vec::Vectorized<T> splat(T x) {
  return at::vec::Vectorized<T>(x);
}

// Hessian variant over a contiguous span: w <- f(w, g, g~).
template <typename T>
void hessian_span(T* w, const T* g, const T* gl, int64_t n, const Coefficients<T>& c) {
  using Vec = at::vec::Vectorized<T>;
  const Coefficients<Vec> cv{splat(c.one), splat(c.lr), splat(c.lr_alpha), splat(c.q), splat(c.neg_q)};
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec out = hessian_update(Vec::loadu(w + i), Vec::loadu(g + i), Vec::loadu(gl + i), cv, VecClamp<T>{});
    out.store(w + i);
  }
  for (; i < n; ++i) w[i] = hessian_update(w[i], g[i], gl[i], c, ScalarClamp{});
}

// Paper variant over a contiguous span: (w, d) <- f(w, g, d).
template <typename T>
void paper_span(T* w, const T* g, T* d, int64_t n, const Coefficients<T>& c) {
  using Vec = at::vec::Vectorized<T>;
  const Coefficients<Vec> cv{splat(c.one), splat(c.lr), splat(c.lr_alpha), splat(c.q), splat(c.neg_q)};
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

struct WorkItem {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

void run(Variant variant, at::TensorList params, at::TensorList first, at::TensorList second, double lr,
         double alpha, const c10::optional<at::Tensor>& alpha_rows, double q) {
  const bool per_row = alpha_rows.has_value();
  at::Tensor alpha_values;
  const double* alpha_ptr = nullptr;
  if (per_row) {
    alpha_values = alpha_rows->to(at::kDouble).contiguous();
    alpha_ptr = alpha_values.data_ptr<double>();
  }

  std::vector<WorkItem> items;
  std::vector<int64_t> row_len(params.size());
  int64_t total = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const int64_t n = params[k].numel();
    row_len[k] = row_length(params[k], per_row);
    for (int64_t b = 0; b < n; b += kChunk) items.push_back({static_cast<int64_t>(k), b, std::min(n, b + kChunk)});
    total += n;
  }

  auto process = [&](const WorkItem& item) {
    const at::Tensor& p = params[item.tensor];
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "leadfl_cpu", [&] {
      scalar_t* w = p.data_ptr<scalar_t>();
      scalar_t* a = first[item.tensor].data_ptr<scalar_t>();
      scalar_t* b = second[item.tensor].data_ptr<scalar_t>();
      auto span = [&](int64_t lo, int64_t hi, const Coefficients<scalar_t>& c) {
        if (variant == Variant::kHessian) {
          hessian_span<scalar_t>(w + lo, a + lo, b + lo, hi - lo, c);
        } else {
          paper_span<scalar_t>(w + lo, a + lo, b + lo, hi - lo, c);
        }
      };
      if (!per_row) {
        span(item.begin, item.end, coefficients<scalar_t>(lr, alpha, q));
        return;
      }
      // Split the chunk where rows (and so alpha) change.
      const int64_t len = row_len[item.tensor];
      for (int64_t lo = item.begin; lo < item.end;) {
        const int64_t row = lo / len;
        const int64_t hi = std::min(item.end, (row + 1) * len);
        span(lo, hi, coefficients<scalar_t>(lr, alpha_ptr[row], q));
        lo = hi;
      }
    });
  };

  auto body = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) process(items[i]);
  };
  if (total < kParallelThreshold) {
    body(0, static_cast<int64_t>(items.size()));
  } else {
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, body);
  }
}

void fused_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList lookahead_grads, double lr,
                    double alpha, const c10::optional<at::Tensor>& alpha_rows, double q) {
  constexpr const char* op = "leadfl::fused_step_";
  check_hyperparameters(op, lr, alpha, q);
  check_tensor_lists(op, params, grads, "grads", lookahead_grads, "lookahead_grads", alpha_rows, false);
  run(Variant::kHessian, params, grads, lookahead_grads, lr, alpha, alpha_rows, q);
}

void paper_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList deltas, double lr, double alpha,
                    const c10::optional<at::Tensor>& alpha_rows, double q) {
  constexpr const char* op = "leadfl::paper_step_";
  check_hyperparameters(op, lr, alpha, q);
  check_tensor_lists(op, params, grads, "grads", deltas, "deltas", alpha_rows, false);
  run(Variant::kPaper, params, grads, deltas, lr, alpha, alpha_rows, q);
}

}  // namespace

TORCH_LIBRARY_IMPL(leadfl, CPU, m) {
  m.impl("fused_step_", &fused_step_cpu);
  m.impl("paper_step_", &paper_step_cpu);
}

}  // namespace leadfl
