// Training-time dropout for fp32 tensors on the CPU, as a Paddle custom operator (`bert_dropout_cpu`).
//
// Why this exists: Paddle 2.6's CPU `dropout` kernel draws one number per element from a std::mt19937_64
// through std::uniform_real_distribution, on one thread: about 10 ns per element, 0.4 s of a 5.3 s
// bert-base pre-training step on a 2-core CPU (38 dropout layers, ~39 M elements per step). This kernel
// makes the same kind of mask from a counter-based generator, so any element's draw can be computed on
// its own: the work splits over threads (`parallel.h`), and the mask does not depend on the thread count.
//
// The generator: element i of a call keyed by (seed, stream) gets the SplitMix64 output
//   z = (seed ^ (stream * K1)) + (i + 1) * K2,   z = mix64(z),   u = (z >> 40) / 2^24   in [0, 1)
// (K2 is SplitMix64's golden-ratio increment, mix64 its finaliser), which is SplitMix64's own sequence
// from a per-call starting point. The element is dropped when u < p, as Paddle's kernel decides with its
// uniform draw. `seed` is a tensor the program draws once per step from Paddle's global generator (a
// `randint` op), so the masks follow `paddle.seed` exactly as Paddle's dropout does: the same seed gives
// the same masks, and a resume that restores the generator replays them. `stream` is an attribute unique
// to each dropout op of the program, so two layers never share a mask.
//
// Outputs are Paddle's: Out = X / (1 - p) where kept (upscale_in_train) or X (downgrade_in_infer), 0 where
// dropped; Mask (uint8) 1 where kept. Paddle's own `dropout_grad` reads them unchanged. p == 1 drops all.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "paddle/extension.h"
#include "parallel.h"

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // SplitMix64's increment (2^64 / golden ratio)
constexpr uint64_t kStream = 0xD1B54A32D192ED03ull;  // an odd constant that spreads stream ids apart

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<paddle::Tensor> DropoutCpu(const paddle::Tensor& x, const paddle::Tensor& seed, float p,
                                       bool upscale_in_train, int stream) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "bert_dropout_cpu takes float32 input");
  PD_CHECK(seed.dtype() == paddle::DataType::INT64 && seed.numel() == 1,
           "bert_dropout_cpu: Seed must be one int64");
  PD_CHECK(p >= 0.0f && p <= 1.0f, "bert_dropout_cpu: p must lie in [0, 1]");
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto mask = paddle::empty(x.shape(), paddle::DataType::UINT8, paddle::CPUPlace());
  const int64_t n = x.numel();
  const float* in = x.data<float>();
  float* y = out.data<float>();
  uint8_t* m = mask.data<uint8_t>();
  if (p >= 1.0f) {
    std::fill(y, y + n, 0.0f);
    std::fill(m, m + n, uint8_t{0});
    return {out, mask};
  }
  const uint64_t key = static_cast<uint64_t>(seed.data<int64_t>()[0]) ^ (static_cast<uint64_t>(stream) * kStream);
  // u < p  <=>  (z >> 40) < ceil(p * 2^24), compared in integers (p * 2^24 is exact in double).
  const uint64_t threshold = static_cast<uint64_t>(std::ceil(static_cast<double>(p) * 16777216.0));
  const float scale = upscale_in_train ? 1.0f - p : 1.0f;
  bert_cpu::ParallelFor(n, n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const uint64_t z = Mix64(key + static_cast<uint64_t>(i + 1) * kGolden);
      const bool keep = (z >> 40) >= threshold;
      m[i] = keep ? 1 : 0;
      // Paddle's kernel divides (x / (1 - p)), so the kept values are bit-identical to its own.
      y[i] = keep ? (upscale_in_train ? in[i] / scale : in[i]) : 0.0f;
    }
  });
  return {out, mask};
}

std::vector<std::vector<int64_t>> DropoutShape(const std::vector<int64_t>& x, const std::vector<int64_t>&) {
  return {x, x};
}

std::vector<paddle::DataType> DropoutDtype(const paddle::DataType& x, const paddle::DataType&) {
  return {x, paddle::DataType::UINT8};
}

}  // namespace

PD_BUILD_OP(bert_dropout_cpu)
    .Inputs({"X", "Seed"})
    .Outputs({"Out", "Mask"})
    .Attrs({"p: float", "upscale_in_train: bool", "stream: int"})
    .SetKernelFn(PD_KERNEL(DropoutCpu))
    .SetInferShapeFn(PD_INFER_SHAPE(DropoutShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DropoutDtype));
