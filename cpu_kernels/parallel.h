// Threads and deterministic block sums shared by the gradient kernels (bias_add_grad_cpu.cc,
// layer_norm_grad_cpu.cc) and the dropout kernel (dropout_cpu.cc); lamb_cpu.cc takes the thread count.
//
// Threads: plain std::threads started per call and joined before returning -- not an OpenMP team. An
// OpenMP runtime keeps its workers spinning after each parallel region, and on a 2-core machine those
// spinning workers take the cores from the next op (MKL's GEMMs); starting a thread costs ~50 us.
//
// Determinism: a kernel that sums over rows splits the rows into fixed blocks of kRowBlock rows, sums each
// block in double into its own slot, then adds the block sums in block order. Threads only decide who
// computes which block, never the order of any addition, so every sum is bit-identical whatever
// OMP_NUM_THREADS is (a run resumed on another thread count continues exactly).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

namespace bert_cpu {

constexpr int64_t kRowBlock = 64;
// Below this many elements of work per thread, starting a thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 17;

inline int Threads() {
  static const int threads = [] {
    const char* env = std::getenv("OMP_NUM_THREADS");
    const int n = env ? std::atoi(env) : 0;
    return n > 0 ? std::min(n, 64) : 1;
  }();
  return threads;
}

// Calls body(first, end) on contiguous ranges covering [0, items), one range per thread; `elements` is the
// total work (to decide whether threads pay). Bodies must write disjoint outputs.
template <typename Body>
void ParallelFor(int64_t items, int64_t elements, const Body& body) {
  const int64_t threads =
      std::min<int64_t>({Threads(), items, elements / kMinElementsPerThread});
  if (threads <= 1) {
    if (items > 0) body(int64_t{0}, items);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t per = (items + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t lo = std::min(items, t * per), hi = std::min(items, lo + per);
    if (lo < hi) workers.emplace_back([&body, lo, hi] { body(lo, hi); });
  }
  body(int64_t{0}, std::min(items, per));
  for (auto& worker : workers) worker.join();
}

// out[j] = sum over blocks b, in order b = 0, 1, ..., of partial[b * cols + j], rounded once to float.
inline void SumBlocksInOrder(const std::vector<double>& partial, int64_t blocks, int64_t cols, float* out) {
  ParallelFor(cols, blocks * cols, [&](int64_t lo, int64_t hi) {
    std::vector<double> total(partial.begin() + lo, partial.begin() + hi);
    for (int64_t b = 1; b < blocks; ++b) {
      const double* row = partial.data() + b * cols;
      for (int64_t j = lo; j < hi; ++j) total[j - lo] += row[j];
    }
    for (int64_t j = lo; j < hi; ++j) out[j] = static_cast<float>(total[j - lo]);
  });
}

}  // namespace bert_cpu
