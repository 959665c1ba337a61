// Linear layers, y = x W^T + b over x [..., K], W [N, K], b [N], forward and backward, on the tile table's GEMM.
//
// Why not MindSpore's MatMul: on the encoder's shapes (rows = batch x length, K and N of 256-1,024) MindSpore's CPU
// MatMul runs at 0.4-0.7 of the machine's sgemm rate, and the linear layers are a third of the model's FLOPs. A BLAS
// from the process (scipy's OpenBLAS, by address) was tried first: inside MindSpore's process it ran on one thread.
// The attention kernels' micro-kernel (tile_kernels.h `gemm`, AVX2 / AVX-512 / portable) already runs at 0.8 of
// that rate; this file feeds it the three products of a linear layer, blocked for the caches, on the thread pool:
//   forward   Y  = X W^T + b     A = X rows,          B = W^T packed in column panels, Y prefilled with b
//   backward  dX = dY W          A = dY rows,         B = W packed in column panels
//             dW = dY^T X        A = dY^T (strided),  B = X rows as they are; reduction over all rows of X
//             db = column sums of dY, accumulated in double.
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

// Rows of A per task: a multiple of every table's micro-kernel height (6 for AVX2, 12 for 16 lanes), and a strip of
// 48 x kDepthBlock floats (48 KB) stays in L2 while each B panel (kDepthBlock x 16, 16 KB) sits in L1.
constexpr int kRowsPerTask = 48;
// The reduction is cut into blocks of this depth so B's panels fit in L1 whatever K is.
constexpr int kDepthBlock = 256;
// dW's tasks: output tiles of 48 rows x 64 columns (4 panels), each reducing over every row of X.
constexpr int kWeightGradientColumns = 64;
// Columns of db per task: the sums of one block stay in L1 (64 doubles) while every row streams past.
constexpr int64_t kBiasColumnsPerTask = 64;

int check_float32(const char* kernel, const AotArgs& args) {
  for (int index = 0; index < args.count; ++index) {
    if (!args.has_dtype(index, "float32")) {
      return fail(kernel, std::string("every tensor must be float32; cast before calling, got ") + args.dtypes[index]);
    }
  }
  return 0;
}

// x [..., K] and W [N, K]: rows M of x, or a message naming the mismatch.
int check_shapes(const char* kernel, const Shape& x, const Shape& w, int64_t* rows) {
  if (x.empty() || w.size() != 2 || x.back() != w[1]) {
    return fail(kernel, "x must be [..., K] and weight [N, K] with the same K, got " + shape_string(x) + " and " +
                            shape_string(w));
  }
  int64_t count = 1;
  for (size_t axis = 0; axis + 1 < x.size(); ++axis) count *= x[axis];
  if (count > INT_MAX || w[0] > INT_MAX || w[1] > INT_MAX) {
    return fail(kernel, "a dimension above 2^31 - 1; split the batch");
  }
  *rows = count;
  return 0;
}

int panel_count(int columns) { return (columns + kPanelWidth - 1) / kPanelWidth; }

// B (depth x columns) with B(p, j) = source[p * p_stride + j * j_stride], packed in column panels of kPanelWidth
// (tile_kernels.h's layout: panel, then row p, then 16 lanes; the last panel's missing lanes are zero).
std::vector<float> pack_panels(const float* source, int depth, int columns, int64_t p_stride, int64_t j_stride) {
  const int panels = panel_count(columns);
  std::vector<float> packed(static_cast<size_t>(panels) * kPanelWidth * depth, 0.0f);
  parallel_for(panels, [&](int64_t panel) {
    float* out = packed.data() + panel * kPanelWidth * depth;
    const int first = static_cast<int>(panel) * kPanelWidth;
    const int width = std::min(kPanelWidth, columns - first);
    for (int p = 0; p < depth; ++p) {
      for (int lane = 0; lane < width; ++lane) out[p * kPanelWidth + lane] = source[p * p_stride + (first + lane) * j_stride];
    }
  });
  return packed;
}

// C[rows, columns] (ldc) = A[rows, depth] B[depth, columns] (+ C when `add`), B packed by pack_panels, the depth
// cut into kDepthBlock blocks; A(i, p) = a[i * a_row_stride + p * a_col_stride].
void gemm_packed(const TileKernels& kernels, int rows, int columns, int depth, const float* a, int64_t a_row_stride,
                 int64_t a_col_stride, const float* packed, float* c, int64_t ldc, bool add) {
  for (int p0 = 0; p0 < depth; p0 += kDepthBlock) {
    const int block = std::min(kDepthBlock, depth - p0);
    const Accumulate mode = add || p0 > 0 ? Accumulate::kAdd : Accumulate::kOverwrite;
    kernels.gemm({rows, columns, block, 1.0f, a + p0 * a_col_stride, a_row_stride, a_col_stride,
                  packed + static_cast<int64_t>(p0) * kPanelWidth, kPanelWidth,
                  static_cast<int64_t>(kPanelWidth) * depth, c, ldc, mode, nullptr});
  }
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Inputs: x [..., K], weight [N, K], bias [N], float32. Output: y [..., N].
MFGF_EXPORT
int DenseForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "DenseForward";
  if (nparam != 4) return mfgf::fail(kName, "expected 3 inputs and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_float32(kName, args)) return status;
  int64_t rows = 0;
  if (int status = mfgf::check_shapes(kName, args.shape(0), args.shape(1), &rows)) return status;
  const int m = static_cast<int>(rows), n = static_cast<int>(args.dim(1, 0)), k = static_cast<int>(args.dim(1, 1));
  if (args.ndims[2] != 1 || args.dim(2, 0) != n) {
    return mfgf::fail(kName, "bias must be [N] = [" + std::to_string(n) + "], got " + mfgf::shape_string(args.shape(2)));
  }
  const float* x = args.ptr<const float>(0);
  const float* w = args.ptr<const float>(1);
  const float* b = args.ptr<const float>(2);
  float* y = args.ptr<float>(3);
  if (m == 0 || n == 0) return 0;
  const mfgf::TileKernels& kernels = mfgf::tile_kernels();
  // B = W^T: B(p, j) = W[j, p]
  const std::vector<float> w_panels = mfgf::pack_panels(w, k, n, 1, k);
  const int64_t tasks = (m + mfgf::kRowsPerTask - 1) / mfgf::kRowsPerTask;
  mfgf::parallel_for(tasks, [&](int64_t task) {
    const int first = static_cast<int>(task) * mfgf::kRowsPerTask;
    const int count = std::min(mfgf::kRowsPerTask, m - first);
    float* y_rows = y + static_cast<int64_t>(first) * n;
    for (int row = 0; row < count; ++row) std::copy(b, b + n, y_rows + static_cast<int64_t>(row) * n);
    mfgf::gemm_packed(kernels, count, n, k, x + static_cast<int64_t>(first) * k, k, 1, w_panels.data(), y_rows, n,
                      true);
  });
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> DenseForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  std::vector<int64_t> shape = mfgf::shape_of(ndims, shapes, 0);
  if (mfgf::is_unknown_rank(shape)) return shape;
  shape.back() = shapes[1][0];
  return shape;
}

// Inputs: dy [..., N], x [..., K], weight [N, K], float32. Outputs: dx [..., K], d_weight [N, K], d_bias [N].
MFGF_EXPORT
int DenseBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "DenseBackward";
  if (nparam != 6) return mfgf::fail(kName, "expected 3 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_float32(kName, args)) return status;
  int64_t rows = 0;
  if (int status = mfgf::check_shapes(kName, args.shape(1), args.shape(2), &rows)) return status;
  const int m = static_cast<int>(rows), n = static_cast<int>(args.dim(2, 0)), k = static_cast<int>(args.dim(2, 1));
  if (args.elements(0) != rows * n) {
    return mfgf::fail(kName, "dy must be [..., N] with x's rows, got " + mfgf::shape_string(args.shape(0)));
  }
  const float* dy = args.ptr<const float>(0);
  const float* x = args.ptr<const float>(1);
  const float* w = args.ptr<const float>(2);
  float* dx = args.ptr<float>(3);
  float* dw = args.ptr<float>(4);
  float* db = args.ptr<float>(5);
  if (m == 0 || n == 0 || k == 0) {
    std::fill(dx, dx + static_cast<int64_t>(m) * k, 0.0f);
    std::fill(dw, dw + static_cast<int64_t>(n) * k, 0.0f);
    std::fill(db, db + n, 0.0f);
    return 0;
  }
  const mfgf::TileKernels& kernels = mfgf::tile_kernels();

  // dX = dY W: B = W as it is, packed.
  const std::vector<float> w_panels = mfgf::pack_panels(w, n, k, k, 1);
  const int64_t row_tasks = (m + mfgf::kRowsPerTask - 1) / mfgf::kRowsPerTask;
  mfgf::parallel_for(row_tasks, [&](int64_t task) {
    const int first = static_cast<int>(task) * mfgf::kRowsPerTask;
    const int count = std::min(mfgf::kRowsPerTask, m - first);
    mfgf::gemm_packed(kernels, count, k, n, dy + static_cast<int64_t>(first) * n, n, 1, w_panels.data(),
                      dx + static_cast<int64_t>(first) * k, k, false);
  });

  // dW = dY^T X: tiles of dW, each reducing over all M rows in depth blocks; B = X read in place (row-major).
  const int tile_rows = (n + mfgf::kRowsPerTask - 1) / mfgf::kRowsPerTask;
  const int tile_columns = (k + mfgf::kWeightGradientColumns - 1) / mfgf::kWeightGradientColumns;
  mfgf::parallel_for(static_cast<int64_t>(tile_rows) * tile_columns, [&](int64_t tile) {
    const int i0 = static_cast<int>(tile / tile_columns) * mfgf::kRowsPerTask;
    const int j0 = static_cast<int>(tile % tile_columns) * mfgf::kWeightGradientColumns;
    const int count = std::min(mfgf::kRowsPerTask, n - i0);
    const int width = std::min(mfgf::kWeightGradientColumns, k - j0);
    for (int p0 = 0; p0 < m; p0 += mfgf::kDepthBlock) {
      const int block = std::min(mfgf::kDepthBlock, m - p0);
      kernels.gemm({count, width, block, 1.0f, dy + static_cast<int64_t>(p0) * n + i0, 1, n,
                    x + static_cast<int64_t>(p0) * k + j0, k, mfgf::kPanelWidth, dw + static_cast<int64_t>(i0) * k + j0,
                    k, p0 > 0 ? mfgf::Accumulate::kAdd : mfgf::Accumulate::kOverwrite, nullptr});
    }
  });

  const int64_t bias_tasks = (n + mfgf::kBiasColumnsPerTask - 1) / mfgf::kBiasColumnsPerTask;
  mfgf::parallel_for(bias_tasks, [&](int64_t task) {
    const int64_t begin = task * mfgf::kBiasColumnsPerTask;
    const int64_t end = std::min<int64_t>(n, begin + mfgf::kBiasColumnsPerTask);
    double sums[mfgf::kBiasColumnsPerTask] = {};
    for (int64_t row = 0; row < m; ++row) {
      const float* dy_row = dy + row * n;
      for (int64_t column = begin; column < end; ++column) sums[column - begin] += dy_row[column];
    }
    for (int64_t column = begin; column < end; ++column) db[column] = static_cast<float>(sums[column - begin]);
  });
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> DenseBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  const mfgf::Shape x = mfgf::shape_of(ndims, shapes, 1);
  const mfgf::Shape weight = mfgf::shape_of(ndims, shapes, 2);
  return {x, weight, {weight.empty() ? -1 : weight[0]}};
}

}  // extern "C"
