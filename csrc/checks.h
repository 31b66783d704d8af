// Argument validation shared by the CPU and CUDA kernels. Every check runs before any write,
// and every message names the argument, the bad value, what is allowed and the fix.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

namespace leadfl {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

inline void check_hyperparameters(const char* op, double lr, double alpha, double q) {
  TORCH_CHECK(std::isfinite(lr) && lr > 0, op, ": lr=", lr,
              " is not allowed; lr must be a finite number > 0 (the local learning rate eta)");
  TORCH_CHECK(std::isfinite(q) && q > 0, op, ": q=", q,
              " is not allowed; q must be a finite number > 0 (the clip threshold, 0.2 by default)");
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0, op, ": alpha=", alpha,
              " is not allowed; alpha must be a finite number >= 0 (0 turns the update into plain SGD)");
}

// Checks the triples (params[k], first[k], second[k]) and the optional per-row alpha.
// `allow_reduced` admits float16/bfloat16 (CUDA only).
inline void check_tensor_lists(const char* op, at::TensorList params, at::TensorList first,
                               const char* first_name, at::TensorList second,
                               const char* second_name, const c10::optional<at::Tensor>& alpha_rows,
                               bool allow_reduced) {
  TORCH_CHECK(first.size() == params.size(), op, ": ", first_name, " has ", first.size(),
              " tensors but params has ", params.size(), "; pass exactly one ", first_name,
              " tensor per parameter tensor");
  TORCH_CHECK(second.size() == params.size(), op, ": ", second_name, " has ", second.size(),
              " tensors but params has ", params.size(), "; pass exactly one ", second_name,
              " tensor per parameter tensor");
  if (params.empty()) return;
  const at::Device device = params[0].device();
  for (size_t k = 0; k < params.size(); ++k) {
    const at::Tensor& p = params[k];
    const at::Tensor* others[2] = {&first[k], &second[k]};
    const char* names[2] = {first_name, second_name};
    TORCH_CHECK(p.defined(), op, ": params[", k, "] is undefined; pass real tensors");
    TORCH_CHECK(p.device() == device, op, ": params[", k, "] is on ", p.device(), " but params[0] is on ",
                device, "; move every tensor to one device");
    const auto dt = p.scalar_type();
    const bool ok_dtype = dt == at::kFloat || dt == at::kDouble ||
                          (allow_reduced && (dt == at::kHalf || dt == at::kBFloat16));
    TORCH_CHECK(ok_dtype, op, ": params[", k, "] has dtype ", dt, ", which is not supported on ",
                device.type(), "; allowed: float32, float64",
                allow_reduced ? ", float16, bfloat16" : " (float16/bfloat16 only on CUDA)",
                "; convert with .float()");
    TORCH_CHECK(p.is_contiguous(), op, ": params[", k, "] (shape ", shape_str(p),
                ") is not contiguous; the op updates memory in place and needs contiguous tensors; "
                "call .contiguous() on the tensor (and keep using that copy)");
    for (int j = 0; j < 2; ++j) {
      const at::Tensor& o = *others[j];
      TORCH_CHECK(o.defined(), op, ": ", names[j], "[", k, "] is undefined (a parameter without a gradient?); "
                  "pass a tensor for every parameter, e.g. torch.zeros_like(param)");
      TORCH_CHECK(o.sizes().equals(p.sizes()), op, ": ", names[j], "[", k, "] has shape ", shape_str(o),
                  " but params[", k, "] has shape ", shape_str(p), "; tensor k of every list must have the same shape");
      TORCH_CHECK(o.scalar_type() == dt, op, ": ", names[j], "[", k, "] has dtype ", o.scalar_type(),
                  " but params[", k, "] has dtype ", dt, "; convert it with .to(params[", k, "].dtype)");
      TORCH_CHECK(o.device() == device, op, ": ", names[j], "[", k, "] is on ", o.device(), " but params[",
                  k, "] is on ", device, "; move it with .to(params[", k, "].device)");
      TORCH_CHECK(o.is_contiguous(), op, ": ", names[j], "[", k, "] is not contiguous; call .contiguous() on it");
    }
  }
  if (alpha_rows.has_value()) {
    const at::Tensor& a = *alpha_rows;
    TORCH_CHECK(a.dim() == 1, op, ": alpha as a tensor must be 1-D (one value per row of dim 0), got shape ",
                shape_str(a), "; pass a float for one alpha everywhere");
    TORCH_CHECK(at::isFloatingType(a.scalar_type()), op, ": alpha tensor has dtype ", a.scalar_type(),
                "; it must be floating point, e.g. torch.tensor([...], dtype=torch.float32)");
    TORCH_CHECK(a.device() == device, op, ": alpha tensor is on ", a.device(), " but params are on ", device,
                "; move it with .to(", device, ")");
    for (size_t k = 0; k < params.size(); ++k) {
      TORCH_CHECK(params[k].dim() >= 1 && params[k].size(0) == a.size(0), op, ": alpha tensor has ",
                  a.size(0), " values but params[", k, "] has shape ", shape_str(params[k]),
                  "; a per-row alpha needs dim 0 of every tensor to have exactly ", a.size(0),
                  " rows (stack clients along dim 0), or pass a float");
    }
    if (a.device().is_cpu()) {
      // Values are checked where they live; on CUDA this would need a host sync.
      const at::Tensor ad = a.to(at::kDouble);
      const double* v = ad.data_ptr<double>();
      for (int64_t r = 0; r < ad.numel(); ++r) {
        TORCH_CHECK(std::isfinite(v[r]) && v[r] >= 0, op, ": alpha[", r, "]=", v[r],
                    " is not allowed; every alpha must be a finite number >= 0");
      }
    }
  }
}

// Elements per row of dim 0 (the span that shares one alpha), or 0 for a scalar alpha.
inline int64_t row_length(const at::Tensor& t, bool per_row) {
  if (!per_row) return 0;
  const int64_t rows = t.size(0);
  return rows == 0 ? 0 : t.numel() / rows;
}

}  // namespace leadfl
