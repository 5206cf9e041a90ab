// LAMB update for fp32 parameters on the CPU, as a Paddle custom operator (`bert_lamb_cpu`).
//
// Why this exists: Paddle 2.6's CPU `lamb` kernel walks every parameter three times on one thread (moments
// into a temporary, two Eigen norms, then the update, taking two square roots per element), which made the
// optimizer about a quarter of a bert-base pre-training step on a 2-core CPU. This kernel does the same
// arithmetic in two vectorisable passes split over OMP_NUM_THREADS threads and needs no temporary.
//
// Threads: plain std::threads started per call for tensors of at least kParallelChunks chunks, joined
// before returning -- not an OpenMP team. An OpenMP runtime keeps its workers spinning after each
// parallel region, and on a 2-core machine those spinning workers (this kernel's, or MKL's own between
// GEMMs) take the cores from the next op's work; starting two threads costs ~50 us against ~100 ms of work.
//
// The arithmetic is Paddle's, operation for operation, so the moments come out bit-identical and the
// parameters agree to a few ulp (only the order of the two norm sums differs):
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g
//   r  = (m / (1 - beta1_pow)) / (sqrt(v / (1 - beta2_pow)) + epsilon) + weight_decay * p
//   ratio = (|p| > 0 and |r| > 0) ? |p| / |r| : 1      (only when weight_decay > 0 or always_adapt)
//   p  = p - (lr * ratio) * r
//   beta1_pow *= beta1, beta2_pow *= beta2
// and, like Paddle's kernel, a true SkipUpdate leaves every output untouched.
//
// Determinism: the norms are summed in double over fixed 64 Ki-element chunks and the chunk sums are added
// in index order, so the result does not depend on the number of threads (resumes stay bit-exact).
// Build with -ffp-contract=off so the compiler does not fuse a*b+c into FMAs that would change rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#include "paddle/extension.h"
#include "parallel.h"

namespace {

constexpr int64_t kChunk = int64_t{1} << 16;
constexpr int64_t kParallelChunks = 16;  // below ~1 M elements one thread is faster than starting more

// Calls body(first_chunk, end_chunk) on contiguous ranges of [0, chunks), one per thread.
template <typename Body>
void ForChunks(int64_t chunks, const Body& body) {
  const int64_t threads = std::min<int64_t>(bert_cpu::Threads(), chunks / kParallelChunks);
  if (threads <= 1) {
    body(int64_t{0}, chunks);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t per = (chunks + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t lo = std::min(chunks, t * per), hi = std::min(chunks, lo + per);
    workers.emplace_back([&body, lo, hi] { body(lo, hi); });
  }
  body(int64_t{0}, std::min(chunks, per));
  for (auto& worker : workers) worker.join();
}

inline float Direction(float m, float v, float p, float bias1, float bias2, float epsilon, float decay) {
  return (m / bias1) / (std::sqrt(v / bias2) + epsilon) + decay * p;
}

void LambCpu(paddle::Tensor& param, const paddle::Tensor& grad, const paddle::Tensor& learning_rate,
             paddle::Tensor& moment1, paddle::Tensor& moment2, paddle::Tensor& beta1_pow,
             paddle::Tensor& beta2_pow, const paddle::Tensor& skip_update,
             float weight_decay, float beta1, float beta2, float epsilon, bool always_adapt) {
  PD_CHECK(param.dtype() == paddle::DataType::FLOAT32 && grad.dtype() == paddle::DataType::FLOAT32,
           "bert_lamb_cpu takes float32 parameters and gradients");
  PD_CHECK(param.numel() == grad.numel() && param.numel() == moment1.numel() &&
               param.numel() == moment2.numel(),
           "bert_lamb_cpu: parameter, gradient and moments differ in size");
  // SkipUpdate is declared optional but taken as a plain Tensor (undefined when the op has none): Paddle's
  // helper for `paddle::optional<Tensor>` calls the deprecated `is_initialized()`, whose glog warning would
  // land in every CPU pretraining log. `initialized()` is its replacement.
  if (skip_update.initialized() && skip_update.data<bool>()[0]) return;

  const int64_t n = param.numel();
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* m = moment1.data<float>();
  float* v = moment2.data<float>();
  const float bias1 = 1.0f - beta1_pow.data<float>()[0];
  const float bias2 = 1.0f - beta2_pow.data<float>()[0];
  const float keep1 = 1.0f - beta1, keep2 = 1.0f - beta2;
  const bool adapt = weight_decay > 0.0f || always_adapt;

  // Pass 1: moments, and the squared norms of p and of the update direction r, chunk by chunk.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> p_sq(chunks, 0.0), r_sq(chunks, 0.0);
  ForChunks(chunks, [&](int64_t first, int64_t end) {
    for (int64_t c = first; c < end; ++c) {
      const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
      double sp = 0.0, sr = 0.0;
      for (int64_t i = lo; i < hi; ++i) {
        const float gi = g[i];
        const float mi = beta1 * m[i] + keep1 * gi;
        const float vi = beta2 * v[i] + keep2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float r = Direction(mi, vi, p[i], bias1, bias2, epsilon, weight_decay);
        sp += static_cast<double>(p[i]) * p[i];
        sr += static_cast<double>(r) * r;
      }
      p_sq[c] = sp;
      r_sq[c] = sr;
    }
  });
  float ratio = 1.0f;
  if (adapt) {
    double sp = 0.0, sr = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      sp += p_sq[c];
      sr += r_sq[c];
    }
    const float p_norm = std::sqrt(static_cast<float>(sp));
    const float r_norm = std::sqrt(static_cast<float>(sr));
    if (p_norm > 0.0f && r_norm > 0.0f) ratio = p_norm / r_norm;
  }
  const float step = learning_rate.data<float>()[0] * ratio;

  // Pass 2: recompute r from the new moments (cheaper than storing it) and move the parameter.
  ForChunks(chunks, [&](int64_t first, int64_t end) {
    const int64_t hi = std::min(n, end * kChunk);
    for (int64_t i = first * kChunk; i < hi; ++i) {
      p[i] = p[i] - step * Direction(m[i], v[i], p[i], bias1, bias2, epsilon, weight_decay);
    }
  });
  beta1_pow.data<float>()[0] *= beta1;
  beta2_pow.data<float>()[0] *= beta2;
}

}  // namespace

PD_BUILD_OP(bert_lamb_cpu)
    .Inputs({"Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow",
             paddle::Optional("SkipUpdate")})
    .Outputs({"ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"})
    .Attrs({"weight_decay: float", "beta1: float", "beta2: float", "epsilon: float", "always_adapt: bool"})
    .SetInplaceMap({{"Param", "ParamOut"},
                    {"Moment1", "Moment1Out"},
                    {"Moment2", "Moment2Out"},
                    {"Beta1Pow", "Beta1PowOut"},
                    {"Beta2Pow", "Beta2PowOut"}})
    .SetKernelFn(PD_KERNEL(LambCpu));
