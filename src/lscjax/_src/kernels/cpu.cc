// Block-sparse matmul on the CPU as an XLA FFI custom call: the fused kernel of the "cpu" path of
// lscjax.sparse.matmul (lscjax/_src/kernels/cpu.py).
//
//   y[m, r * bo : (r + 1) * bo] = sum_{s < counts[r]} x[m, indices[r, s] * bi : +bi] @ values[r, s]
//
// x f32 [M, C * bi], values f32 [R, Kmax, bi, bo] (bo in {16, 32, 64}), indices int32 [R, Kmax]
// in [0, C), counts int32 [R] (clamped to [0, Kmax]); y f32 [M, R * bo]. Unlike the XLA path,
// nothing is gathered or padded in memory: each output tile's accumulators stay in registers over
// the block row's slots, and padded slots cost nothing. Work is cut into tiles of (rows of x,
// block rows) and shared with XLA's intra-op thread pool.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  const float* x;
  const float* values;
  const int32_t* indices;
  const int32_t* counts;  // clamped copies
  float* y;
  int64_t m, k, rows, kmax;
  int bi, bo;
};

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
#include "cpu_tile.inc"
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu_tile.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace generic {
#include "cpu_tile.inc"
}  // namespace generic

using TileFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t);

TileFn pick_tile() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f")) return avx512::run_tile;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2::run_tile;
#endif
  return generic::run_tile;
}

const TileFn kTile = pick_tile();

// Rows of x per work item: enough items for every thread (about 4 each), at least 32 rows.
int64_t rows_per_item(int64_t m, int64_t row_items, int64_t threads) {
  const int64_t want = std::max<int64_t>(1, 4 * threads / std::max<int64_t>(1, row_items));
  return std::max<int64_t>(32, (m + want - 1) / want);
}

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error BlockMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> indices,
                           ffi::Buffer<ffi::S32> counts, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto vd = values.dimensions();
  if (xd.size() != 2 || vd.size() != 4 || indices.dimensions().size() != 2 ||
      counts.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("lscjax block matmul: operands of the wrong rank");
  Problem p{x.typed_data(), values.typed_data(), indices.typed_data(), nullptr, y->typed_data(),
            xd[0], xd[1], vd[0], vd[1], static_cast<int>(vd[2]), static_cast<int>(vd[3])};
  const int64_t cols = p.bi > 0 ? p.k / p.bi : 0;
  if ((p.bo != 16 && p.bo != 32 && p.bo != 64) || p.bi <= 0 || cols * p.bi != p.k ||
      indices.dimensions()[0] != p.rows || indices.dimensions()[1] != p.kmax ||
      counts.dimensions()[0] != p.rows)
    return ffi::Error::InvalidArgument("lscjax block matmul: mismatched operand shapes");
  std::vector<int32_t> clamped(p.rows);
  for (int64_t r = 0; r < p.rows; ++r) {
    clamped[r] = static_cast<int32_t>(std::clamp<int64_t>(counts.typed_data()[r],
                                                          0, p.kmax));
    for (int32_t s = 0; s < clamped[r]; ++s) {
      const int32_t c = p.indices[r * p.kmax + s];
      if (c < 0 || c >= cols)
        return ffi::Error::InvalidArgument("lscjax block matmul: block index " +
                                           std::to_string(c) + " outside [0, " +
                                           std::to_string(cols) + ")");
    }
  }
  p.counts = clamped.data();
  if (p.m == 0 || p.rows == 0) return ffi::Error::Success();

  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t rows_per = std::max<int64_t>(1, std::min<int64_t>(p.rows, 4));
  const int64_t row_items = (p.rows + rows_per - 1) / rows_per;
  const int64_t m_per = rows_per_item(p.m, row_items, threads);
  const int64_t m_items = (p.m + m_per - 1) / m_per;
  const int64_t total = m_items * row_items;
  auto progress = std::make_shared<Progress>();
  // Every thread (this one included) takes items until none is left; a helper that starts late
  // finds none and returns, so waiting below only waits for items already being computed.
  auto drain = [p, progress, total, m_items, rows_per, m_per]() {
    for (int64_t t; (t = progress->next.fetch_add(1)) < total;) {
      const int64_t im = t % m_items, ir = t / m_items;
      kTile(p, ir * rows_per, std::min(p.rows, (ir + 1) * rows_per), im * m_per,
            std::min(p.m, (im + 1) * m_per));
      progress->done.fetch_add(1);
    }
  };
  for (int64_t h = 0; h < std::min(threads, total - 1); ++h) pool.Schedule([drain]() { drain(); });
  drain();
  while (progress->done.load() < total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LscjaxBlockMatmulF32, BlockMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The Python module: one function returning the handler as a PyCapsule for
// jax.ffi.register_ffi_target.
static PyObject* block_matmul_f32(PyObject*, PyObject*) {
  return PyCapsule_New(reinterpret_cast<void*>(LscjaxBlockMatmulF32), nullptr, nullptr);
}

static PyMethodDef kMethods[] = {
    {"block_matmul_f32", block_matmul_f32, METH_NOARGS,
     "The XLA FFI handler of the f32 block-sparse product, as a PyCapsule."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu",
                              "lscjax's CPU kernels (XLA FFI handlers).", -1, kMethods};

PyMODINIT_FUNC PyInit__cpu() { return PyModule_Create(&kModule); }
