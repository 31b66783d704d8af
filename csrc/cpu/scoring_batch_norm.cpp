// leadfl::batch_norm_scoring_: a batch-statistics BatchNorm forward (training mode, no running
// statistics) for contiguous float32 CPU tensors that gives the bits of ATen's own CPU kernel
// (native_batch_norm) in less time.
//
// ATen's kernel (aten/src/ATen/native/cpu/batch_norm_kernel.cpp, contiguous path) sums each
// channel's values one after another in double (first the values, then (x - mean)^2 with the
// difference and the square in float), one dependent addition per value. Its running time is the
// latency of that chain. Here the same sums, in the same order per channel, run for 4 channels
// in the 4 double lanes of an AVX2 register and for up to 4 such registers at once: every lane
// performs exactly the additions of ATen's chain, so the sums are the same bits. Then, as ATen:
//   mean   = float(sum / N)                       (double division)
//   invstd = float(1 / sqrt(double(float(var_sum) / N) + eps))
//   alpha  = invstd * weight,  beta = fma(-mean, alpha, bias),  out = fma(x, alpha, beta)
// (ATen's AVX2 build, the one checked here, contracts `bias - mean * alpha` and `x * alpha + beta` into fused
// multiply-adds). The Python side checks the result against native_batch_norm on this machine
// before using it (sim.networks), so a torch whose kernel differs is never silently followed.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LEADFL_SCORING_BN_AVX2 1
#include <immintrin.h>
#endif

namespace leadfl {
namespace {

#ifdef LEADFL_SCORING_BN_AVX2

// One value of 4 channel rows at position i, as 4 doubles (lane k = row k).
__attribute__((target("avx2,fma"))) inline __m256d gather4(const float* const* rows, int64_t i) {
  return _mm256_cvtps_pd(_mm_set_ps(rows[3][i], rows[2][i], rows[1][i], rows[0][i]));
}

// Sums of G groups of 4 channel rows: out[c] += x (Square = false) or += (x - mean)^2 in float
// (Square = true), over all images and positions in ATen's order, continuing the sums in `out`
// (so a batch given in consecutive chunks is summed as one).
template <int G, bool Square>
__attribute__((target("avx2,fma"))) void channel_sums(const float* x, int64_t batch, int64_t channels,
                                                      int64_t image, int64_t c0, const float* mean,
                                                      double* out) {
  __m256d acc[G];
  __m128 m[G];
  for (int g = 0; g < G; ++g) {
    acc[g] = _mm256_loadu_pd(out + c0 + 4 * g);
    m[g] = Square ? _mm_loadu_ps(mean + c0 + 4 * g) : _mm_setzero_ps();
  }
  const int64_t body = image - image % 4;
  for (int64_t n = 0; n < batch; ++n) {
    const float* base = x + (n * channels + c0) * image;
    int64_t i = 0;
    for (; i < body; i += 4) {
      for (int g = 0; g < G; ++g) {
        const float* r = base + 4 * g * image + i;
        __m128 a0 = _mm_loadu_ps(r), a1 = _mm_loadu_ps(r + image), a2 = _mm_loadu_ps(r + 2 * image),
               a3 = _mm_loadu_ps(r + 3 * image);
        _MM_TRANSPOSE4_PS(a0, a1, a2, a3);  // a_j = the 4 rows' values at position i + j
        if (Square) {
          a0 = _mm_sub_ps(a0, m[g]), a1 = _mm_sub_ps(a1, m[g]), a2 = _mm_sub_ps(a2, m[g]), a3 = _mm_sub_ps(a3, m[g]);
          a0 = _mm_mul_ps(a0, a0), a1 = _mm_mul_ps(a1, a1), a2 = _mm_mul_ps(a2, a2), a3 = _mm_mul_ps(a3, a3);
        }
        acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(a0));
        acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(a1));
        acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(a2));
        acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(a3));
      }
    }
    for (; i < image; ++i) {
      for (int g = 0; g < G; ++g) {
        const float* r = base + 4 * g * image;
        const float* rows[4] = {r, r + image, r + 2 * image, r + 3 * image};
        if (Square) {
          __m128 a = _mm_sub_ps(_mm_set_ps(rows[3][i], rows[2][i], rows[1][i], rows[0][i]), m[g]);
          acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(_mm_mul_ps(a, a)));
        } else {
          acc[g] = _mm256_add_pd(acc[g], gather4(rows, i));
        }
      }
    }
  }
  for (int g = 0; g < G; ++g) _mm256_storeu_pd(out + c0 + 4 * g, acc[g]);
}

template <bool Square>
__attribute__((target("avx2,fma"))) void all_channel_sums(const float* x, int64_t batch, int64_t channels,
                                                          int64_t image, const float* mean, double* out) {
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) channel_sums<4, Square>(x, batch, channels, image, c, mean, out);
  if (channels - c >= 12) {
    channel_sums<3, Square>(x, batch, channels, image, c, mean, out);
    c += 12;
  } else if (channels - c >= 8) {
    channel_sums<2, Square>(x, batch, channels, image, c, mean, out);
    c += 8;
  } else if (channels - c >= 4) {
    channel_sums<1, Square>(x, batch, channels, image, c, mean, out);
    c += 4;
  }
  for (; c < channels; ++c) {  // the last channels one by one, as ATen
    double sum = out[c];
    const float m = Square ? mean[c] : 0.0f;
    for (int64_t n = 0; n < batch; ++n) {
      const float* r = x + (n * channels + c) * image;
      for (int64_t i = 0; i < image; ++i) {
        if (Square) {
          const float d = r[i] - m;
          sum += static_cast<double>(d * d);
        } else {
          sum += r[i];
        }
      }
    }
    out[c] = sum;
  }
}

__attribute__((target("avx2,fma"))) void normalise(const float* x, float* y, int64_t batch, int64_t channels,
                                                   int64_t image, const float* alpha, const float* beta) {
  const int64_t body = image - image % 8;
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const float* src = x + (n * channels + c) * image;
      float* dst = y + (n * channels + c) * image;
      const __m256 a = _mm256_set1_ps(alpha[c]), b = _mm256_set1_ps(beta[c]);
      int64_t i = 0;
      for (; i < body; i += 8) _mm256_storeu_ps(dst + i, _mm256_fmadd_ps(_mm256_loadu_ps(src + i), a, b));
      for (; i < image; ++i) dst[i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(src[i]), _mm_set_ss(alpha[c]), _mm_set_ss(beta[c])));
    }
  }
}

__attribute__((target("avx2,fma"))) float fma_float(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

#endif  // LEADFL_SCORING_BN_AVX2

bool cpu_has_avx2_fma() {
#ifdef LEADFL_SCORING_BN_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

void check_param(const char* op, const c10::optional<at::Tensor>& t, const char* name, int64_t channels) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->numel() == channels &&
                  t->is_contiguous(),
              "leadfl::", op, ": ", name, " must be a contiguous float32 CPU tensor of ", channels,
              " values (one per channel), got ", t->scalar_type(), " of shape ", t->sizes(), " on ", t->device(),
              "; fix: pass the BatchNorm layer's own ", name, " or None");
}

}  // namespace

bool batch_norm_scoring_available() { return cpu_has_avx2_fma(); }

namespace {

// The checks both ops share, before any work; `op` names the op in the messages.
void check_input(const char* op, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                 const c10::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(cpu_has_avx2_fma(), "leadfl::", op,
              " needs a CPU with AVX2 and FMA, which this one does not report; "
              "fix: use torch.native_batch_norm (check leadfl::batch_norm_scoring_available() first)");
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == at::kFloat && input.is_contiguous() && input.dim() >= 2,
              "leadfl::", op, ": input must be a contiguous float32 CPU tensor with a batch and a channel dimension, got ",
              input.scalar_type(), " of shape ", input.sizes(), " on ", input.device(),
              "; fix: .contiguous() / .float(), or use torch.native_batch_norm");
  const int64_t batch = input.size(0), channels = input.size(1);
  TORCH_CHECK(channels > 0 && input.numel() > channels, "leadfl::", op,
              ": expected more than 1 value per channel, got input of shape ", input.sizes(),
              "; fix: score a batch of more than one value per channel");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "leadfl::", op, ": eps=", eps,
              " is not allowed; eps must be a finite number >= 0");
  TORCH_CHECK(input.numel() / batch / channels > 1, "leadfl::", op, ": input of shape ", input.sizes(),
              " has one value per channel and image, which ATen normalises by another kernel (its channels-last "
              "one); fix: use torch.native_batch_norm for such inputs");
  check_param(op, weight, "weight", channels);
  check_param(op, bias, "bias", channels);
}

void check_out(const char* op, const at::Tensor& input, const at::Tensor& out, c10::IntArrayRef shape) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.is_contiguous() && out.sizes() == shape &&
                  !out.is_same(input),
              "leadfl::", op, ": out must be a contiguous float32 CPU tensor of shape ", shape,
              " and not the input itself, got ", out.scalar_type(), " of shape ", out.sizes(),
              "; fix: out = torch.empty(", shape, ")");
}

#ifdef LEADFL_SCORING_BN_AVX2
// Per channel, ATen's batch statistics of the batch that `chunks` make one after another (split
// along the batch dimension), turned into the affine map it applies: out = fma(x, alpha[c], beta[c]).
void affine_terms(at::TensorList chunks, const c10::optional<at::Tensor>& weight,
                  const c10::optional<at::Tensor>& bias, double eps, std::vector<float>& alpha,
                  std::vector<float>& beta) {
  const int64_t channels = chunks[0].size(1);
  const int64_t image = chunks[0].numel() / chunks[0].size(0) / channels;
  int64_t count = 0;
  for (const auto& chunk : chunks) count += chunk.size(0) * image;
  std::vector<double> sums(channels, 0.0);
  std::vector<float> mean(channels);
  for (const auto& chunk : chunks)
    all_channel_sums<false>(chunk.const_data_ptr<float>(), chunk.size(0), channels, image, nullptr, sums.data());
  for (int64_t c = 0; c < channels; ++c) {
    mean[c] = static_cast<float>(sums[c] / count);
    sums[c] = 0.0;
  }
  for (const auto& chunk : chunks)
    all_channel_sums<true>(chunk.const_data_ptr<float>(), chunk.size(0), channels, image, mean.data(), sums.data());
  const float* w = weight.has_value() && weight->defined() ? weight->const_data_ptr<float>() : nullptr;
  const float* b = bias.has_value() && bias->defined() ? bias->const_data_ptr<float>() : nullptr;
  alpha.resize(channels);
  beta.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double var = static_cast<float>(sums[c]) / count;  // float / int64 in float, as ATen
    double invstd = 0;
    if (var != 0 || eps != 0) invstd = 1.0 / std::sqrt(var + eps);
    alpha[c] = static_cast<float>(invstd) * (w ? w[c] : 1.0f);
    beta[c] = fma_float(-mean[c], alpha[c], b ? b[c] : 0.0f);
  }
}

// The larger of a and b, NaN if either is (torch.maximum's rule).
__attribute__((target("avx2,fma"))) inline __m256 nan_max(__m256 a, __m256 b) {
  return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}

__attribute__((target("avx2,fma"))) inline float nan_max(float a, float b) {
  return (a != a || a > b) ? a : b;  // b when b is NaN and a is not: b > a is false either way
}

// ReLU (max(v, 0), NaN kept) of the 2x2 max-pool of the normalised plane: out[h][w] is the
// maximum of fma(x, alpha, beta) over rows 2h, 2h+1 and columns 2w, 2w+1 (a trailing odd row or
// column is left out, as max_pool2d does).
__attribute__((target("avx2,fma"))) void normalise_relu_pool(const float* x, float* y, int64_t planes,
                                                             int64_t channels, int64_t height,
                                                             int64_t width, const float* alpha, const float* beta) {
  const int64_t out_h = height / 2, out_w = width / 2;
  const int64_t body = out_w - out_w % 8;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t c = p % channels;
    const __m256 a = _mm256_set1_ps(alpha[c]), b = _mm256_set1_ps(beta[c]);
    const float* plane = x + p * height * width;
    float* dst = y + p * out_h * out_w;
    for (int64_t h = 0; h < out_h; ++h) {
      const float* top = plane + 2 * h * width;
      const float* bottom = top + width;
      int64_t w = 0;
      for (; w < body; w += 8) {
        // 16 columns of each row: the 8 windows 2w .. 2w+15
        const __m256 t0 = _mm256_fmadd_ps(_mm256_loadu_ps(top + 2 * w), a, b);
        const __m256 t1 = _mm256_fmadd_ps(_mm256_loadu_ps(top + 2 * w + 8), a, b);
        const __m256 b0 = _mm256_fmadd_ps(_mm256_loadu_ps(bottom + 2 * w), a, b);
        const __m256 b1 = _mm256_fmadd_ps(_mm256_loadu_ps(bottom + 2 * w + 8), a, b);
        const __m256 v0 = nan_max(t0, b0), v1 = nan_max(t1, b1);  // columns 0-7 and 8-15, rows merged
        // even and odd columns (within 128-bit halves), then the halves back in column order
        const __m256 even = _mm256_shuffle_ps(v0, v1, 0x88), odd = _mm256_shuffle_ps(v0, v1, 0xDD);
        __m256 m = nan_max(even, odd);
        m = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_castps_si256(m), order));
        _mm256_storeu_ps(dst + h * out_w + w, nan_max(m, zero));
      }
      for (; w < out_w; ++w) {
        const float t0 = fma_float(top[2 * w], alpha[c], beta[c]), t1 = fma_float(top[2 * w + 1], alpha[c], beta[c]);
        const float b0 = fma_float(bottom[2 * w], alpha[c], beta[c]),
                    b1 = fma_float(bottom[2 * w + 1], alpha[c], beta[c]);
        dst[h * out_w + w] = nan_max(nan_max(nan_max(t0, b0), nan_max(t1, b1)), 0.0f);
      }
    }
  }
}
#endif  // LEADFL_SCORING_BN_AVX2

}  // namespace

at::Tensor& batch_norm_scoring_(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias, double eps, at::Tensor& out) {
  check_input("batch_norm_scoring_", input, weight, bias, eps);
  check_out("batch_norm_scoring_", input, out, input.sizes());
#ifdef LEADFL_SCORING_BN_AVX2
  std::vector<float> alpha, beta;
  affine_terms({input}, weight, bias, eps, alpha, beta);
  const int64_t batch = input.size(0), channels = input.size(1);
  normalise(input.const_data_ptr<float>(), out.mutable_data_ptr<float>(), batch, channels,
            input.numel() / batch / channels, alpha.data(), beta.data());
#endif
  return out;
}

at::Tensor& batch_norm_relu_pool_scoring_(at::TensorList chunks, const c10::optional<at::Tensor>& weight,
                                          const c10::optional<at::Tensor>& bias, double eps, at::Tensor& out) {
  constexpr const char* op = "batch_norm_relu_pool_scoring_";
  TORCH_CHECK(!chunks.empty(), "leadfl::", op,
              ": got no input; fix: pass the batch, or its chunks along the batch dimension, as a list of tensors");
  const at::Tensor& first = chunks[0];
  TORCH_CHECK(first.dim() == 4 && first.size(2) >= 2 && first.size(3) >= 2, "leadfl::", op,
              ": input must be (N, C, H, W) with H, W >= 2 for a 2x2 max-pool, got shape ", first.sizes(),
              "; fix: use batch_norm_scoring_ and max_pool2d");
  int64_t batch = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const at::Tensor& chunk = chunks[k];
    TORCH_CHECK(chunk.dim() == 4 && chunk.size(0) > 0 && chunk.sizes().slice(1) == first.sizes().slice(1), "leadfl::",
                op, ": chunk ", k, " has shape ", chunk.sizes(), ", the first ", first.sizes(),
                "; fix: chunks of one batch split along dimension 0, none empty");
    TORCH_CHECK(chunk.device().is_cpu() && chunk.scalar_type() == at::kFloat && chunk.is_contiguous(), "leadfl::", op,
                ": chunk ", k, " must be a contiguous float32 CPU tensor, got ", chunk.scalar_type(), " on ",
                chunk.device(), "; fix: .contiguous() / .float()");
    batch += chunk.size(0);
  }
  const int64_t channels = first.size(1), height = first.size(2), width = first.size(3);
  check_input(op, first, weight, bias, eps);  // the AVX2 check, eps, the parameters' shapes
  const std::vector<int64_t> shape = {batch, channels, height / 2, width / 2};
  check_out(op, first, out, shape);
  for (const auto& chunk : chunks)
    TORCH_CHECK(!out.is_same(chunk), "leadfl::", op, ": out must not be one of the chunks; fix: a fresh tensor");
#ifdef LEADFL_SCORING_BN_AVX2
  std::vector<float> alpha, beta;
  affine_terms(chunks, weight, bias, eps, alpha, beta);
  float* y = out.mutable_data_ptr<float>();
  for (const auto& chunk : chunks) {
    normalise_relu_pool(chunk.const_data_ptr<float>(), y, chunk.size(0) * channels, channels, height, width,
                        alpha.data(), beta.data());
    y += chunk.size(0) * channels * (height / 2) * (width / 2);
  }
#endif
  return out;
}

TORCH_LIBRARY_FRAGMENT(leadfl, m) {
  m.def("batch_norm_scoring_available() -> bool", &batch_norm_scoring_available);
  m.def("batch_norm_scoring_(Tensor input, Tensor? weight, Tensor? bias, float eps, Tensor(a!) out) -> Tensor(a!)",
        &batch_norm_scoring_);
  m.def(
      "batch_norm_relu_pool_scoring_(Tensor[] chunks, Tensor? weight, Tensor? bias, float eps, Tensor(a!) out) -> "
      "Tensor(a!)",
      &batch_norm_relu_pool_scoring_);
}

}  // namespace leadfl
