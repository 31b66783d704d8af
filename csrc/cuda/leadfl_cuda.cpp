// CUDA registration of leadfl::fused_step_ and leadfl::paper_step_: validates, collects the
// tensors' addresses and hands them to the launcher in leadfl_kernel.cu, on the current stream,
// without a host synchronisation.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "leadfl_kernel.h"

namespace leadfl {
namespace {

cuda::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::kFloat32;
    case at::kDouble: return cuda::Dtype::kFloat64;
    case at::kHalf: return cuda::Dtype::kFloat16;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default: TORCH_CHECK(false, "leadfl: unsupported dtype ", t);  // unreachable after the checks
  }
}

void run(cuda::Variant variant, at::TensorList params, at::TensorList first, at::TensorList second, double lr,
         double alpha, const c10::optional<at::Tensor>& alpha_rows, double q, double identity) {
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const bool per_row = alpha_rows.has_value();
  bool any_double = false, any_single = false;
  std::vector<cuda::TensorRef> refs;
  refs.reserve(params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    const cuda::Dtype dt = kernel_dtype(params[k].scalar_type());
    (dt == cuda::Dtype::kFloat64 ? any_double : any_single) = true;
    refs.push_back(cuda::TensorRef{params[k].data_ptr(), first[k].data_ptr(), second[k].data_ptr(),
                                   params[k].numel(), row_length(params[k], per_row), dt});
  }
  // The kernels read alpha in their arithmetic type; a conversion is skipped when it already matches.
  at::Tensor alpha_f32, alpha_f64;
  if (per_row) {
    if (any_single) alpha_f32 = alpha_rows->to(at::kFloat).contiguous();
    if (any_double) alpha_f64 = alpha_rows->to(at::kDouble).contiguous();
  }
  const cuda::LaunchResult result = cuda::launch_update(
      variant, refs.data(), static_cast<int64_t>(refs.size()), lr, alpha,
      alpha_f32.defined() ? alpha_f32.data_ptr<float>() : nullptr,
      alpha_f64.defined() ? alpha_f64.data_ptr<double>() : nullptr, q, identity,
      static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_CHECK(static_cast<cudaError_t>(result.error));
}

void fused_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList lookahead_grads, double lr,
                     double alpha, const c10::optional<at::Tensor>& alpha_rows, double q, double identity) {
  constexpr const char* op = "leadfl::fused_step_";
  check_arguments(op, params, grads, "grads", lookahead_grads, "lookahead_grads", false, lr, alpha, alpha_rows, q,
                  true);
  check_identity(op, identity, params);
  run(cuda::Variant::kHessian, params, grads, lookahead_grads, lr, alpha, alpha_rows, q, identity);
}

void paper_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList deltas, double lr, double alpha,
                     const c10::optional<at::Tensor>& alpha_rows, double q) {
  constexpr const char* op = "leadfl::paper_step_";
  check_arguments(op, params, grads, "grads", deltas, "deltas", true, lr, alpha, alpha_rows, q, true);
  run(cuda::Variant::kPaper, params, grads, deltas, lr, alpha, alpha_rows, q, 1.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(leadfl, CUDA, m) {
  m.impl("fused_step_", &fused_step_cuda);
  m.impl("paper_step_", &paper_step_cuda);
}

}  // namespace leadfl
