// CPU kernels of leadfl::fused_step_ and leadfl::paper_step_: one pass over memory, parallel over
// fixed-size chunks of all tensors with at::parallel_for; the vectorised loops over each chunk
// (ATen's Vectorized<T>, chosen per CPU) are in leadfl_cpu_spans.h.
// Each tensor is walked in memory order, element i of params[k] with element i of the other
// lists' tensor k: checks.h admits only dense tensors of one layout per index, for which that is
// the same logical element whatever the layout (contiguous, channels_last, ...).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "../leadfl_math.h"
#include "leadfl_cpu_spans_table.h"

namespace leadfl {
namespace {

// Elements per parallel work item: large enough to amortise scheduling, small enough that a
// 64M-element tensor splits into thousands of items that balance across threads.
constexpr int64_t kChunk = 1 << 15;
// Below this many elements in total, threading costs more than it saves.
constexpr int64_t kParallelThreshold = 1 << 17;

enum class Variant { kHessian, kPaper };

template <typename T>
Coefficients<T> coefficients(double lr, double alpha, double q, double identity) {
  return Coefficients<T>{static_cast<T>(identity), static_cast<T>(lr), static_cast<T>(lr * alpha),
                         static_cast<T>(q), static_cast<T>(-q)};
}

void span(const SpanKernels& k, Variant v, float* w, const float* a, float* b, int64_t n,
          const Coefficients<float>& c) {
  v == Variant::kHessian ? k.hessian_f32(w, a, b, n, c) : k.paper_f32(w, a, b, n, c);
}

void span(const SpanKernels& k, Variant v, double* w, const double* a, double* b, int64_t n,
          const Coefficients<double>& c) {
  v == Variant::kHessian ? k.hessian_f64(w, a, b, n, c) : k.paper_f64(w, a, b, n, c);
}

struct WorkItem {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

void run(Variant variant, at::TensorList params, at::TensorList first, at::TensorList second, double lr,
         double alpha, const c10::optional<at::Tensor>& alpha_rows, double q, double identity) {
  const SpanKernels& kernels = span_kernels_for_this_cpu();
  const bool per_row = alpha_rows.has_value();
  at::Tensor alpha_copy;
  const double* alpha_ptr = nullptr;
  if (per_row) {
    alpha_copy = alpha_values(*alpha_rows);
    alpha_ptr = alpha_copy.const_data_ptr<double>();
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
      auto run_span = [&](int64_t lo, int64_t hi, const Coefficients<scalar_t>& c) {
        span(kernels, variant, w + lo, a + lo, b + lo, hi - lo, c);
      };
      if (!per_row) {
        run_span(item.begin, item.end, coefficients<scalar_t>(lr, alpha, q, identity));
        return;
      }
      // Split the chunk where rows (and so alpha) change.
      const int64_t len = row_len[item.tensor];
      for (int64_t lo = item.begin; lo < item.end;) {
        const int64_t row = lo / len;
        const int64_t hi = std::min(item.end, (row + 1) * len);
        run_span(lo, hi, coefficients<scalar_t>(lr, alpha_ptr[row], q, identity));
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
                    double alpha, const c10::optional<at::Tensor>& alpha_rows, double q, double identity) {
  constexpr const char* op = "leadfl::fused_step_";
  check_arguments(op, params, grads, "grads", lookahead_grads, "lookahead_grads", false, lr, alpha, alpha_rows, q,
                  false);
  check_identity(op, identity, params);
  run(Variant::kHessian, params, grads, lookahead_grads, lr, alpha, alpha_rows, q, identity);
}

void paper_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList deltas, double lr, double alpha,
                    const c10::optional<at::Tensor>& alpha_rows, double q) {
  constexpr const char* op = "leadfl::paper_step_";
  check_arguments(op, params, grads, "grads", deltas, "deltas", true, lr, alpha, alpha_rows, q, false);
  run(Variant::kPaper, params, grads, deltas, lr, alpha, alpha_rows, q, 1.0);
}

}  // namespace

std::string cpu_kernel_isa() { return span_kernels_name(); }

TORCH_LIBRARY_FRAGMENT(leadfl, m) { m.def("cpu_kernel_isa() -> str", &cpu_kernel_isa); }

TORCH_LIBRARY_IMPL(leadfl, CPU, m) {
  m.impl("fused_step_", &fused_step_cpu);
  m.impl("paper_step_", &paper_step_cpu);
}

}  // namespace leadfl
