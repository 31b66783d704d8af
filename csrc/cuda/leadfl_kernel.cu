// CUDA kernels of the LeadFL update: a multi-tensor apply in one launch. The launch's argument
// block carries every tensor's addresses, sizes and first block; each block updates one chunk of
// one tensor with 16-byte vector loads where the addresses allow. No torch header is included,
// so `nvcc -c` compiles this file on a machine without a GPU or a CUDA build of torch.
//
// The work of one (block, thread) is a __host__ __device__ function, so that with
// LEADFL_HOST_EMULATION the same indexing runs serially on the host (leadfl_emulate_update at the
// end) and the tests check it against the reference on a machine without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "../leadfl_math.h"
#include "leadfl_kernel.h"

namespace leadfl {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;  // elements per block

// Kernel arguments above 4 KB need CUDA 12.1 and a Volta or newer GPU.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kLargeCapacity = 256;
#else
constexpr int kLargeCapacity = 48;
#endif
constexpr int kSmallCapacity = 32;

#if defined(__CUDACC_VER_MAJOR__) && __CUDACC_VER_MAJOR__ >= 12
#define LEADFL_GRID_CONSTANT __grid_constant__
#else
#define LEADFL_GRID_CONSTANT
#endif

#define LEADFL_HD_INLINE __host__ __device__ __forceinline__

template <int Capacity>
struct LaunchArgs {
  void* w[Capacity];
  const void* g[Capacity];
  void* third[Capacity];
  int64_t numel[Capacity];
  int64_t row_len[Capacity];
  int32_t block_start[Capacity + 1];  // first block of tensor k; block_start[count] = total blocks
  int32_t count;
};

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

LEADFL_HD_INLINE float to_acc(float x) { return x; }
LEADFL_HD_INLINE double to_acc(double x) { return x; }
LEADFL_HD_INLINE float to_acc(__half x) { return __half2float(x); }
LEADFL_HD_INLINE float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
LEADFL_HD_INLINE T from_acc(typename AccType<T>::type x);
template <>
LEADFL_HD_INLINE float from_acc<float>(float x) { return x; }
template <>
LEADFL_HD_INLINE double from_acc<double>(double x) { return x; }
template <>
LEADFL_HD_INLINE __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
LEADFL_HD_INLINE __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename Acc>
LEADFL_HD_INLINE Coefficients<Acc> make_coefficients(Acc one, Acc lr, Acc lr_alpha, Acc q) {
  return Coefficients<Acc>{one, lr, lr_alpha, q, -q};
}

// One element: reads w, g, third; writes w (and third for the paper variant).
template <Variant V, typename T, typename Acc>
LEADFL_HD_INLINE void update_element(T& w, T g, T& third, const Coefficients<Acc>& c) {
  if (V == Variant::kHessian) {
    w = from_acc<T>(hessian_update(to_acc(w), to_acc(g), to_acc(third), c, ScalarClamp{}));
  } else {
    Acc wa = to_acc(w);
    Acc da = to_acc(third);
    paper_update(wa, to_acc(g), da, c, ScalarClamp{});
    w = from_acc<T>(wa);
    third = from_acc<T>(da);
  }
}

// The share of thread `thread` (of `num_threads`) in block `block`: every element i of the block's
// chunk with i = thread (mod num_threads), in vectors of kVec where the addresses allow. `thread` is
// an unsigned, or DeviceThread in the kernel.
template <Variant V, typename T, int Capacity, typename Thread>
LEADFL_HD_INLINE void update_block_thread(const LaunchArgs<Capacity>& args, int32_t block, Thread thread,
                                          unsigned num_threads, double lr_d, double alpha_d,
                                          const typename AccType<T>::type* __restrict__ alpha_rows,
                                          double q_d, double one_d) {
  using Acc = typename AccType<T>::type;
  constexpr int kVec = Pack<T>::kSize;

  // The tensor this block works on: the last k with block_start[k] <= block.
  int lo = 0, hi = args.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (args.block_start[mid] <= block) lo = mid; else hi = mid - 1;
  }
  const int k = lo;
  const int64_t begin = static_cast<int64_t>(block - args.block_start[k]) * kChunk;
  const int64_t numel = args.numel[k];
  const int64_t len = (numel - begin < kChunk) ? numel - begin : kChunk;
  T* __restrict__ w = static_cast<T*>(args.w[k]) + begin;
  const T* __restrict__ g = static_cast<const T*>(args.g[k]) + begin;
  T* __restrict__ third = static_cast<T*>(args.third[k]) + begin;
  const int64_t row_len = args.row_len[k];

  const Acc lr = static_cast<Acc>(lr_d);
  const Acc q = static_cast<Acc>(q_d);
  const Acc one = static_cast<Acc>(one_d);
  const Coefficients<Acc> scalar_c = make_coefficients<Acc>(one, lr, static_cast<Acc>(lr_d * alpha_d), q);
  auto coefficients_at = [&](int64_t i) -> Coefficients<Acc> {
    if (alpha_rows == nullptr) return scalar_c;
    return make_coefficients<Acc>(one, lr, lr * alpha_rows[(begin + i) / row_len], q);
  };

  const bool aligned = ((reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(third)) % 16) == 0;
  int64_t vec_end = 0;
  if (aligned) {
    vec_end = (len / kVec) * kVec;
    for (int64_t i = static_cast<int64_t>(thread) * kVec; i < vec_end; i += num_threads * kVec) {
      Pack<T> wp = *reinterpret_cast<const Pack<T>*>(w + i);
      const Pack<T> gp = *reinterpret_cast<const Pack<T>*>(g + i);
      Pack<T> tp = *reinterpret_cast<const Pack<T>*>(third + i);
      const bool one_row =
          alpha_rows == nullptr || ((begin + i) / row_len) == ((begin + i + kVec - 1) / row_len);
      const Coefficients<Acc> c0 = coefficients_at(i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        update_element<V, T, Acc>(wp.v[j], gp.v[j], tp.v[j], one_row ? c0 : coefficients_at(i + j));
      }
      *reinterpret_cast<Pack<T>*>(w + i) = wp;
      if (V == Variant::kPaper) *reinterpret_cast<Pack<T>*>(third + i) = tp;
    }
  }
  for (int64_t i = vec_end + static_cast<unsigned>(thread); i < len; i += num_threads) {
    T wi = w[i];
    T ti = third[i];
    update_element<V, T, Acc>(wi, g[i], ti, coefficients_at(i));
    w[i] = wi;
    if (V == Variant::kPaper) third[i] = ti;
  }
}

// threadIdx.x, read where update_block_thread uses it, as the kernel body did before it moved
// there: an index read once stays live across the vector loop, and ptxas then gives the paper
// kernels for half and bfloat16 6 to 10 more registers (sm_90), i.e. one block less per SM.
struct DeviceThread {
  __device__ __forceinline__ operator unsigned() const { return threadIdx.x; }
};

template <Variant V, typename T, int Capacity>
__global__ void __launch_bounds__(kThreads)
    leadfl_update_kernel(const LEADFL_GRID_CONSTANT LaunchArgs<Capacity> args, double lr_d, double alpha_d,
                         const typename AccType<T>::type* __restrict__ alpha_rows, double q_d, double one_d) {
  update_block_thread<V, T, Capacity>(args, static_cast<int32_t>(blockIdx.x), DeviceThread{},
                                      kThreads, lr_d, alpha_d, alpha_rows, q_d, one_d);
}

// Runs one launch on the GPU, on `stream`.
struct GpuLauncher {
  cudaStream_t stream;

  template <Variant V, typename T, int Capacity>
  int run(const LaunchArgs<Capacity>& args, int32_t blocks, double lr, double alpha,
          const typename AccType<T>::type* alpha_rows, double q, double one) const {
    leadfl_update_kernel<V, T, Capacity><<<blocks, kThreads, 0, stream>>>(args, lr, alpha, alpha_rows, q, one);
    return static_cast<int>(cudaGetLastError());
  }
};

#ifdef LEADFL_HOST_EMULATION
// Runs one launch on the host: every block and every thread of it in turn, on host memory. The
// threads of a launch write disjoint elements, so the serial order gives the GPU's result.
struct HostLauncher {
  template <Variant V, typename T, int Capacity>
  int run(const LaunchArgs<Capacity>& args, int32_t blocks, double lr, double alpha,
          const typename AccType<T>::type* alpha_rows, double q, double one) const {
    for (int32_t block = 0; block < blocks; ++block) {
      for (unsigned thread = 0; thread < kThreads; ++thread) {
        update_block_thread<V, T, Capacity>(args, block, thread, kThreads, lr, alpha, alpha_rows, q, one);
      }
    }
    return 0;
  }
};
#endif

template <typename T, int Capacity, typename Launcher>
int launch_batch(Variant variant, const std::vector<const TensorRef*>& batch, double lr, double alpha,
                 const typename AccType<T>::type* alpha_rows, double q, double one, const Launcher& launcher) {
  LaunchArgs<Capacity> args;
  int32_t blocks = 0;
  args.count = static_cast<int32_t>(batch.size());
  for (size_t k = 0; k < batch.size(); ++k) {
    const TensorRef& t = *batch[k];
    args.w[k] = t.w;
    args.g[k] = t.g;
    args.third[k] = t.third;
    args.numel[k] = t.numel;
    args.row_len[k] = t.row_len;
    args.block_start[k] = blocks;
    blocks += static_cast<int32_t>((t.numel + kChunk - 1) / kChunk);
  }
  args.block_start[batch.size()] = blocks;
  if (variant == Variant::kHessian) {
    return launcher.template run<Variant::kHessian, T, Capacity>(args, blocks, lr, alpha, alpha_rows, q, one);
  }
  return launcher.template run<Variant::kPaper, T, Capacity>(args, blocks, lr, alpha, alpha_rows, q, one);
}

template <typename T, typename Launcher>
LaunchResult launch_dtype(Variant variant, const std::vector<const TensorRef*>& refs, double lr, double alpha,
                          const typename AccType<T>::type* alpha_rows, double q, double one,
                          const Launcher& launcher) {
  LaunchResult result{0, 0};
  for (size_t start = 0; start < refs.size(); start += kLargeCapacity) {
    const size_t stop = start + kLargeCapacity < refs.size() ? start + kLargeCapacity : refs.size();
    const std::vector<const TensorRef*> batch(refs.begin() + start, refs.begin() + stop);
    // A small argument block keeps the launch cheap for short lists.
    result.error = batch.size() <= kSmallCapacity
                       ? launch_batch<T, kSmallCapacity>(variant, batch, lr, alpha, alpha_rows, q, one, launcher)
                       : launch_batch<T, kLargeCapacity>(variant, batch, lr, alpha, alpha_rows, q, one, launcher);
    ++result.launches;
    if (result.error != 0) return result;
  }
  return result;
}

// Groups the non-empty tensors by dtype and hands each group to launch_dtype.
template <typename Launcher>
LaunchResult launch_all(Variant variant, const TensorRef* tensors, int64_t count, double lr, double alpha,
                        const float* alpha_rows_f32, const double* alpha_rows_f64, double q, double one,
                        const Launcher& launcher) {
  std::vector<const TensorRef*> by_dtype[4];
  for (int64_t k = 0; k < count; ++k) {
    if (tensors[k].numel > 0) by_dtype[static_cast<int>(tensors[k].dtype)].push_back(&tensors[k]);
  }
  LaunchResult total{0, 0};
  auto add = [&](LaunchResult r) {
    total.launches += r.launches;
    if (total.error == 0) total.error = r.error;
  };
  if (!by_dtype[0].empty()) add(launch_dtype<float>(variant, by_dtype[0], lr, alpha, alpha_rows_f32, q, one, launcher));
  if (!by_dtype[1].empty()) add(launch_dtype<double>(variant, by_dtype[1], lr, alpha, alpha_rows_f64, q, one, launcher));
  if (!by_dtype[2].empty()) add(launch_dtype<__half>(variant, by_dtype[2], lr, alpha, alpha_rows_f32, q, one, launcher));
  if (!by_dtype[3].empty()) add(launch_dtype<__nv_bfloat16>(variant, by_dtype[3], lr, alpha, alpha_rows_f32, q, one, launcher));
  return total;
}

}  // namespace

int max_tensors_per_launch() { return kLargeCapacity; }

LaunchResult launch_update(Variant variant, const TensorRef* tensors, int64_t count, double lr, double alpha,
                           const float* alpha_rows_f32, const double* alpha_rows_f64, double q, double identity,
                           void* stream) {
  return launch_all(variant, tensors, count, lr, alpha, alpha_rows_f32, alpha_rows_f64, q, identity,
                    GpuLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace cuda
}  // namespace leadfl

#ifdef LEADFL_HOST_EMULATION
// C entry points of the host emulation (loaded with ctypes by the tests): launch_update's inputs,
// with host pointers and no stream. Returns the number of launches the GPU path would issue.
extern "C" int leadfl_emulate_update(int variant, const leadfl::cuda::TensorRef* tensors, int64_t count, double lr,
                                     double alpha, const float* alpha_rows_f32, const double* alpha_rows_f64,
                                     double q, double identity) {
  using namespace leadfl::cuda;
  return launch_all(static_cast<Variant>(variant), tensors, count, lr, alpha, alpha_rows_f32, alpha_rows_f64, q,
                    identity, HostLauncher{})
      .launches;
}

extern "C" int leadfl_emulate_max_tensors_per_launch() { return leadfl::cuda::max_tensors_per_launch(); }

// Lets a caller that mirrors TensorRef (ctypes) check its layout against this build's.
extern "C" int64_t leadfl_emulate_tensor_ref_size() { return static_cast<int64_t>(sizeof(leadfl::cuda::TensorRef)); }
#endif
