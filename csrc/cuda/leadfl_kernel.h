// Launcher of the CUDA LeadFL kernels. Plain C++: no torch and no CUDA header, so the torch side
// (leadfl_cuda.cpp) and the device side (leadfl_kernel.cu) share it and the .cu builds with nvcc alone.
#pragma once

#include <cstdint>

namespace leadfl {
namespace cuda {

enum class Variant : int { kHessian = 0, kPaper = 1 };
enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// One tensor triple. hessian: (w, g, g~) with g~ read-only; paper: (w, g, D) with D updated.
struct TensorRef {
  void* w;
  const void* g;
  void* third;
  int64_t numel;
  int64_t row_len;  // elements per row of dim 0 when alpha is per row; 0 for a scalar alpha
  Dtype dtype;
};

struct LaunchResult {
  int error;     // a cudaError_t; 0 = success
  int launches;  // kernel launches issued
};

// Updates every tensor in `tensors` on `stream` (a cudaStream_t). Tensors of one dtype go in one
// launch (more only past kMaxTensorsPerLaunch). alpha_rows_f32 / alpha_rows_f64: device arrays of
// per-row alphas for float/half/bfloat16 tensors and for double tensors; both null for a scalar alpha.
// `identity` is the constant c of the hessian variant's R = clamp(c - (g~ - g), -q, q) (1 for
// `hessian`, 0 for `curvature`); the paper variant takes 1.
LaunchResult launch_update(Variant variant, const TensorRef* tensors, int64_t count, double lr, double alpha,
                           const float* alpha_rows_f32, const double* alpha_rows_f64, double q, double identity,
                           void* stream);

// Most tensors one launch carries in its argument block.
int max_tensors_per_launch();

}  // namespace cuda
}  // namespace leadfl
