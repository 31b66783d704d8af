// Argument validation shared by the CPU and CUDA kernels. Every check runs before any write,
// and every message names the argument, the bad value, what is allowed and the fix.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace leadfl {

inline std::string join_ints(c10::IntArrayRef values, const char* open, const char* close) {
  std::string s = open;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  return s + close;
}

inline std::string shape_str(const at::Tensor& t) { return join_ints(t.sizes(), "[", "]"); }

inline std::string strides_str(const at::Tensor& t) { return join_ints(t.strides(), "(", ")"); }

// The kernels walk every tensor of one parameter index as one run of numel() elements from its
// first byte, pairing element i of params[k] with element i of first[k] and second[k]. That is
// the tensor's own elements exactly when it is non-overlapping and dense (contiguous,
// channels_last, any permutation of a contiguous tensor), and the same logical element of every
// tensor when their strides agree on every dimension of more than one element (a dimension of
// size 1 never moves the address, so its stride is free). A contiguous tensor passes at once.
inline bool is_dense(const at::Tensor& t) { return t.is_contiguous() || t.is_non_overlapping_and_dense(); }

inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_contiguous() && b.is_contiguous()) return true;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// With a per-row alpha the kernels find an element's row of dim 0 as its position / row length,
// which holds when each row is one block of memory, the rows in order: dim 0 outermost.
inline bool rows_are_blocks(const at::Tensor& t) {
  return t.size(0) <= 1 || t.numel() == 0 || t.stride(0) == t.numel() / t.size(0);
}

inline void check_hyperparameters(const char* op, double lr, double alpha, double q) {
  TORCH_CHECK(std::isfinite(lr) && lr > 0, op, ": lr=", lr,
              " is not allowed; lr must be a finite number > 0 (the local learning rate eta)");
  TORCH_CHECK(std::isfinite(q) && q > 0, op, ": q=", q,
              " is not allowed; q must be a finite number > 0 (the clip threshold, 0.2 by default)");
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0, op, ": alpha=", alpha,
              " is not allowed; alpha must be a finite number >= 0 (0 turns the update into plain SGD)");
}

// The per-row alpha as contiguous float64 values: the one copy that is both validated and used.
inline at::Tensor alpha_values(const at::Tensor& alpha_rows) {
  return alpha_rows.to(at::kDouble).contiguous();
}

inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

// The kernels compute in float64 for float64 tensors and in float32 for every other dtype, so a
// value the checks above accept in double can still overflow (or vanish) there. `what`=`value`
// (lr, q, or a product lr*alpha, with alpha[row] when `row` >= 0) is refused unless it is finite,
// and non-zero when it is non-zero in double, in that type; `knobs` names the settings to change.
inline void check_fits_arithmetic(const char* op, const char* what, int64_t row, double value, const char* knobs,
                                  at::TensorList params) {
  size_t k = 0;  // the first tensor computed in float32, if any
  while (k < params.size() && params[k].scalar_type() == at::kDouble) ++k;
  const bool in_float = k < params.size();
  const double largest = in_float ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max();
  const bool overflow = !(std::fabs(value) <= largest);
  // Only a value within range is converted (converting one outside it is undefined behaviour).
  const bool vanishes = !overflow && in_float && value != 0 && static_cast<float>(value) == 0.0f;
  if (!overflow && !vanishes) return;
  if (!in_float) k = 0;
  const char* type = in_float ? "float32" : "float64";
  const std::string name = row >= 0 ? std::string(what) + "[" + std::to_string(row) + "]" : std::string(what);
  TORCH_CHECK(false, op, ": ", name, "=", value, overflow ? " overflows " : " rounds to 0 in ", type,
              ", the arithmetic type of params[", k, "] (", dtype_name(params[k].scalar_type()), "; ",
              overflow ? "largest finite value " : "smallest positive value ",
              overflow ? largest : static_cast<double>(std::numeric_limits<float>::denorm_min()), "); use a ",
              overflow ? "smaller " : "larger ", knobs);
}

// The constant c of fused_step_'s R = clamp(c - (g~ - g), -q, q): 1 is the `hessian` variant
// (the report's Algorithm 3), 0 the `curvature` ablation. Any finite value the arithmetic type
// of every tensor holds is accepted.
inline void check_identity(const char* op, double identity, at::TensorList params) {
  TORCH_CHECK(std::isfinite(identity), op, ": identity=", identity,
              " is not allowed; identity must be a finite number (1 for the hessian update, 0 for curvature)");
  check_fits_arithmetic(op, "identity", -1, identity, "identity (1 or 0)", params);
}

// One tensor for the overlap check: its memory [begin, end), whether the op writes it, and its
// place among the arguments (messages name the earlier argument first).
struct MemorySpan {
  uintptr_t begin;
  uintptr_t end;
  const char* name;
  int64_t index;  // position in its list, or -1 for a single tensor (alpha)
  bool written;
  size_t order;
};

inline std::string span_name(const MemorySpan& s) {
  return s.index < 0 ? std::string(s.name) : std::string(s.name) + "[" + std::to_string(s.index) + "]";
}

// The first and last byte of a strided tensor (strides >= 0), or an empty span.
inline MemorySpan memory_span(const at::Tensor& t, const char* name, int64_t index, bool written, size_t order) {
  if (t.numel() == 0) return {0, 0, name, index, written, order};
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return {begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size()), name, index, written, order};
}

// Refuses any two tensors that share memory where at least one is written: the kernels read and
// write element by element, so an overlap (the same tensor twice, deltas=params, params=x[4:]
// with grads=x[:-4], ...) gives results that depend on the order of the loops. Read-only
// arguments may overlap each other. One sort and one sweep, so long lists cost little.
inline void check_no_overlap(const char* op, std::vector<MemorySpan> spans) {
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const MemorySpan& s) { return s.begin == s.end; }),
              spans.end());
  std::sort(spans.begin(), spans.end(), [](const MemorySpan& a, const MemorySpan& b) { return a.begin < b.begin; });
  const MemorySpan* reach_any = nullptr;      // among earlier spans, the one reaching furthest
  const MemorySpan* reach_written = nullptr;  // among earlier written spans, the one reaching furthest
  for (const MemorySpan& s : spans) {
    const MemorySpan* hit = s.written ? reach_any : reach_written;
    if (hit != nullptr && s.begin < hit->end) {
      const MemorySpan& first = s.order < hit->order ? s : *hit;
      const MemorySpan& second = s.order < hit->order ? *hit : s;
      const MemorySpan& written = first.written ? first : second;
      const MemorySpan& other = first.written ? second : first;
      TORCH_CHECK(false, op, ": ", span_name(first), " and ", span_name(second), " share memory; the op writes ",
                  span_name(written), " element by element while it reads ", span_name(other),
                  ", so the result would depend on the order of the loop; pass tensors that do not overlap "
                  "(each parameter once, and a .clone() of one of two views of the same tensor)");
    }
    if (reach_any == nullptr || s.end > reach_any->end) reach_any = &s;
    if (s.written && (reach_written == nullptr || s.end > reach_written->end)) reach_written = &s;
  }
}

// Checks the triples (params[k], first[k], second[k]), the optional per-row alpha and the
// hyperparameters. The op writes params and, when `second_written`, second.
// `allow_reduced` admits float16/bfloat16 (CUDA only).
inline void check_arguments(const char* op, at::TensorList params, at::TensorList first, const char* first_name,
                            at::TensorList second, const char* second_name, bool second_written, double lr,
                            double alpha, const c10::optional<at::Tensor>& alpha_rows, double q,
                            bool allow_reduced) {
  check_hyperparameters(op, lr, alpha, q);
  TORCH_CHECK(first.size() == params.size(), op, ": ", first_name, " has ", first.size(),
              " tensors but params has ", params.size(), "; pass exactly one ", first_name,
              " tensor per parameter tensor");
  TORCH_CHECK(second.size() == params.size(), op, ": ", second_name, " has ", second.size(),
              " tensors but params has ", params.size(), "; pass exactly one ", second_name,
              " tensor per parameter tensor");
  if (params.empty()) return;
  const at::Device device = params[0].device();
  const bool inference_mode = c10::InferenceMode::is_enabled();
  std::vector<MemorySpan> spans;
  spans.reserve(3 * params.size() + 1);
  for (size_t k = 0; k < params.size(); ++k) {
    const at::Tensor& p = params[k];
    const at::Tensor* others[2] = {&first[k], &second[k]};
    const char* names[2] = {first_name, second_name};
    const bool written[2] = {false, second_written};
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
    TORCH_CHECK(is_dense(p), op, ": params[", k, "] (shape ", shape_str(p), ", strides ", strides_str(p),
                ") is not dense: its elements overlap or leave gaps in memory; the op updates memory in place "
                "element by element and needs contiguous tensors (or channels_last, or any other permutation of "
                "a contiguous one); call .contiguous() on the tensor (and keep using that copy)");
    TORCH_CHECK(!p.is_inference() || inference_mode, op, ": params[", k,
                "] is an inference tensor (made under torch.inference_mode()) and torch forbids updating one "
                "in place outside inference mode; call the op inside torch.inference_mode(), or pass a clone "
                "made outside it");
    spans.push_back(memory_span(p, "params", static_cast<int64_t>(k), true, spans.size()));
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
      TORCH_CHECK(is_dense(o), op, ": ", names[j], "[", k, "] (shape ", shape_str(o), ", strides ", strides_str(o),
                  ") is not dense: its elements overlap or leave gaps in memory; call .contiguous() on it");
      TORCH_CHECK(same_layout(o, p), op, ": ", names[j], "[", k, "] has strides ", strides_str(o), " but params[",
                  k, "] has strides ", strides_str(p), " (shape ", shape_str(p),
                  "); the op pairs elements by their place in memory, so tensor k of every list needs the memory "
                  "layout of params[", k, "]: pass torch.empty_like(params[", k, "]).copy_(", names[j], "[", k,
                  "]), or make every tensor .contiguous()");
      TORCH_CHECK(!written[j] || !o.is_inference() || inference_mode, op, ": ", names[j], "[", k,
                  "] is an inference tensor (made under torch.inference_mode()) and torch forbids updating one "
                  "in place outside inference mode; call the op inside torch.inference_mode(), or pass a clone "
                  "made outside it");
      spans.push_back(memory_span(o, names[j], static_cast<int64_t>(k), written[j], spans.size()));
    }
  }
  check_fits_arithmetic(op, "lr", -1, lr, "lr", params);
  check_fits_arithmetic(op, "q", -1, q, "q", params);
  if (alpha_rows.has_value()) {
    const at::Tensor& a = *alpha_rows;
    TORCH_CHECK(a.defined(), op, ": alpha tensor is undefined; pass a float or a 1-D tensor");
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
      TORCH_CHECK(rows_are_blocks(params[k]), op, ": params[", k, "] (shape ", shape_str(params[k]), ", strides ",
                  strides_str(params[k]), ") does not keep its rows of dim 0 as consecutive blocks of memory, which "
                  "a per-row alpha needs; make dim 0 the outermost dimension (e.g. .contiguous()), or pass a float");
    }
    spans.push_back(memory_span(a, "alpha", -1, false, spans.size()));
    if (a.device().is_cpu()) {
      // Values are checked where they live; on CUDA this would need a host sync.
      const at::Tensor values = alpha_values(a);
      const double* v = values.const_data_ptr<double>();
      for (int64_t r = 0; r < values.numel(); ++r) {
        TORCH_CHECK(std::isfinite(v[r]) && v[r] >= 0, op, ": alpha[", r, "]=", v[r],
                    " is not allowed; every alpha must be a finite number >= 0");
        check_fits_arithmetic(op, "lr*alpha", r, lr * v[r], "lr or alpha", params);
      }
    }
  } else {
    check_fits_arithmetic(op, "lr*alpha", -1, lr * alpha, "lr or alpha", params);
  }
  check_no_overlap(op, std::move(spans));
}

// Elements per row of dim 0 (the span that shares one alpha; one block of memory, see
// rows_are_blocks), or 0 for a scalar alpha.
inline int64_t row_length(const at::Tensor& t, bool per_row) {
  if (!per_row) return 0;
  const int64_t rows = t.size(0);
  return rows == 0 ? 0 : t.numel() / rows;
}

}  // namespace leadfl
