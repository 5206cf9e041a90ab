// LayerNorm backward over the trailing axes, with scale and bias, as a Paddle custom operator
// (`bert_layer_norm_grad_cpu`) for fp32 on the CPU.
//
// Why this exists: Paddle 2.6's CPU `layer_norm_grad` is Eigen code on one thread that makes several full
// passes and temporaries over [rows, N] (normalised x, dy * scale, two row means, their broadcasts). A
// bert-base step has 26 of them, about 5 % of the step on a 2-core CPU. This kernel reads each row twice
// (the second read hits L1: a row is N = 768 floats) and splits the rows over OMP_NUM_THREADS threads.
//
// The arithmetic is Paddle's: with inv = 1 / sqrt(variance + epsilon) and xh = (x - mean) * inv per row,
//   dBias  = sum over rows of dy
//   dScale = sum over rows of dy * xh
//   dx     = inv * (g - mean_row(g) - xh * mean_row(g * xh)),   g = dy * scale
// Mean and Variance are the forward's saved [rows] statistics (variance without epsilon), as Paddle stores
// them. Row means are summed in double.
//
// Determinism: dScale and dBias are summed in double over fixed 64-row blocks whose sums are added in block
// order (parallel.h); dx depends on its own row only. So every output is bit-identical whatever the thread
// count, and agrees with Paddle's float Eigen sums to fp32 rounding.
#include <cmath>
#include <cstdint>
#include <vector>

#include "paddle/extension.h"
#include "parallel.h"

namespace {

void NormRow(const float* x, const float* dy, const float* scale, int64_t cols, float mean, float inv,
             double* dscale, double* dbias, float* dx) {
  double sum_g = 0.0, sum_gx = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    const float xh = (x[j] - mean) * inv;
    const float g = dy[j] * scale[j];
    sum_g += g;
    sum_gx += static_cast<double>(g) * xh;
    dscale[j] += static_cast<double>(dy[j]) * xh;
    dbias[j] += dy[j];
  }
  const float mean_g = static_cast<float>(sum_g / cols);
  const float mean_gx = static_cast<float>(sum_gx / cols);
  for (int64_t j = 0; j < cols; ++j) {
    const float xh = (x[j] - mean) * inv;
    dx[j] = inv * (dy[j] * scale[j] - mean_g - xh * mean_gx);
  }
}

std::vector<paddle::Tensor> LayerNormGrad(const paddle::Tensor& x, const paddle::Tensor& scale,
                                          const paddle::Tensor& mean, const paddle::Tensor& variance,
                                          const paddle::Tensor& dy, float epsilon, int begin_norm_axis) {
  for (const auto* t : {&x, &scale, &mean, &variance, &dy}) {
    PD_CHECK(t->dtype() == paddle::DataType::FLOAT32, "bert_layer_norm_grad_cpu takes float32 tensors");
  }
  const auto& shape = x.shape();
  PD_CHECK(begin_norm_axis > 0 && begin_norm_axis < static_cast<int>(shape.size()),
           "bert_layer_norm_grad_cpu: begin_norm_axis out of range");
  int64_t rows = 1;
  for (int i = 0; i < begin_norm_axis; ++i) rows *= shape[i];
  const int64_t cols = x.numel() / rows;
  PD_CHECK(dy.numel() == x.numel() && scale.numel() == cols && mean.numel() == rows &&
               variance.numel() == rows,
           "bert_layer_norm_grad_cpu: X, Y@GRAD, Scale, Mean and Variance sizes disagree");

  paddle::Tensor dx = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const int64_t blocks = (rows + bert_cpu::kRowBlock - 1) / bert_cpu::kRowBlock;
  std::vector<double> dscale_part(blocks * cols, 0.0), dbias_part(blocks * cols, 0.0);
  const float *px = x.data<float>(), *pdy = dy.data<float>(), *ps = scale.data<float>();
  const float *pm = mean.data<float>(), *pv = variance.data<float>();
  float* pdx = dx.data<float>();
  bert_cpu::ParallelFor(blocks, x.numel(), [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      const int64_t last = std::min(rows, (b + 1) * bert_cpu::kRowBlock);
      for (int64_t r = b * bert_cpu::kRowBlock; r < last; ++r) {
        const float inv = 1.0f / std::sqrt(pv[r] + epsilon);
        NormRow(px + r * cols, pdy + r * cols, ps, cols, pm[r], inv, dscale_part.data() + b * cols,
                dbias_part.data() + b * cols, pdx + r * cols);
      }
    }
  });
  paddle::Tensor dscale = paddle::empty({cols}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  paddle::Tensor dbias = paddle::empty({cols}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  bert_cpu::SumBlocksInOrder(dscale_part, blocks, cols, dscale.data<float>());
  bert_cpu::SumBlocksInOrder(dbias_part, blocks, cols, dbias.data<float>());
  return {dx, dscale, dbias};
}

std::vector<std::vector<int64_t>> LayerNormGradShape(
    const std::vector<int64_t>& x, const std::vector<int64_t>& scale, const std::vector<int64_t>& mean,
    const std::vector<int64_t>& variance, const std::vector<int64_t>& dy) {
  return {x, scale, scale};
}

std::vector<paddle::DataType> LayerNormGradDtype(const paddle::DataType& x, const paddle::DataType& scale,
                                                 const paddle::DataType& mean,
                                                 const paddle::DataType& variance, const paddle::DataType& dy) {
  return {x, scale, scale};
}

}  // namespace

PD_BUILD_OP(bert_layer_norm_grad_cpu)
    .Inputs({"X", "Scale", "Mean", "Variance", "DY"})
    .Outputs({"DX", "DScale", "DBias"})
    .Attrs({"epsilon: float", "begin_norm_axis: int"})
    .SetKernelFn(PD_KERNEL(LayerNormGrad))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormGradShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormGradDtype));
