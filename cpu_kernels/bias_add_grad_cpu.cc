// Gradient of the bias add after every matmul, `Out = X + Bias` with X [..., N] and Bias [N], as a Paddle
// custom operator (`bert_bias_add_grad_cpu`) for fp32 on the CPU.
//
// Why this exists: Paddle 2.6's CPU `elementwise_add_grad` handles a broadcast Y with a scalar loop on one
// thread that, element by element, writes dX[i] = dOut[i] and adds dOut[i] into dY[j]
// (ElemwiseGradBroadcast1CPU). In a bert-base step its 76 bias cases cost about half a second on a 2-core
// CPU. Here dX costs nothing and dBias is a vectorised column sum split over OMP_NUM_THREADS threads.
//
// dX: Out's gradient, unchanged. The op declares DOut -> DX in place, so Paddle makes DX share DOut's
// buffer; nothing is copied or written. The program rewrite (program_rewrites.use_cpu_training_kernels)
// swaps an op only when this op is DOut's sole reader, so no later op can see the shared buffer change
// under a name it still reads. (Paddle's own in-place pass makes the same sharing for its op.)
//
// dBias[j] = sum over rows r of dOut[r, j], summed in double over fixed 64-row blocks whose sums are added
// in block order (parallel.h), so it is bit-identical for any thread count and more accurate than
// Paddle's float running sum (the two agree to fp32 rounding, ~1e-6 relative for 1024 rows).
#include <cstdint>
#include <vector>

#include "paddle/extension.h"
#include "parallel.h"

namespace {

std::vector<paddle::Tensor> BiasAddGrad(const paddle::Tensor& bias, paddle::Tensor& dout) {
  PD_CHECK(bias.dtype() == paddle::DataType::FLOAT32 && dout.dtype() == paddle::DataType::FLOAT32,
           "bert_bias_add_grad_cpu takes float32 tensors");
  const int64_t cols = bias.numel();
  const auto& shape = dout.shape();
  PD_CHECK(!shape.empty() && shape.back() == cols && bias.shape().size() == 1,
           "bert_bias_add_grad_cpu: the bias [N] must match the last axis of the gradient [..., N]");
  const int64_t rows = dout.numel() / cols;
  const int64_t blocks = (rows + bert_cpu::kRowBlock - 1) / bert_cpu::kRowBlock;
  const float* d = dout.data<float>();

  std::vector<double> partial(blocks * cols, 0.0);
  bert_cpu::ParallelFor(blocks, dout.numel(), [&](int64_t first, int64_t end) {
    for (int64_t b = first; b < end; ++b) {
      double* sum = partial.data() + b * cols;
      const int64_t last = std::min(rows, (b + 1) * bert_cpu::kRowBlock);
      for (int64_t r = b * bert_cpu::kRowBlock; r < last; ++r) {
        const float* row = d + r * cols;
        for (int64_t j = 0; j < cols; ++j) sum[j] += row[j];
      }
    }
  });
  paddle::Tensor dbias = paddle::empty({cols}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  bert_cpu::SumBlocksInOrder(partial, blocks, cols, dbias.data<float>());
  return {dbias};
}

std::vector<std::vector<int64_t>> BiasAddGradShape(const std::vector<int64_t>& bias,
                                                   const std::vector<int64_t>& dout) {
  return {bias};
}

std::vector<paddle::DataType> BiasAddGradDtype(const paddle::DataType& bias, const paddle::DataType& dout) {
  return {bias};
}

}  // namespace

PD_BUILD_OP(bert_bias_add_grad_cpu)
    .Inputs({"Bias", "DOut"})
    .Outputs({"DX", "DBias"})
    .SetInplaceMap({{"DOut", "DX"}})
    .SetKernelFn(PD_KERNEL(BiasAddGrad))
    .SetInferShapeFn(PD_INFER_SHAPE(BiasAddGradShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BiasAddGradDtype));
