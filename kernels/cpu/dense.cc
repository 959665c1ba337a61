// Linear layers, y = x W^T + b over x [..., K], W [N, K], b [N], forward and backward, on the tile table's GEMM.
//
// Why not MindSpore's MatMul: on the encoder's shapes (rows = batch x length, K and N of 256-1,024) MindSpore's CPU
// MatMul runs at 0.4-0.7 of the machine's sgemm rate, and the linear layers are a third of the model's FLOPs. A BLAS
// from the process (scipy's OpenBLAS, by address) was tried first: inside MindSpore's process it ran on one thread.
// The attention kernels' micro-kernel (tile_kernels.h `gemm`, AVX2 / AVX-512 / portable) already runs at 0.8 of
// that rate; this file feeds it the three products of a linear layer, blocked for the caches, on the thread pool:
//   forward   Y  = X W^T + b     A = X rows,          B = W^T packed in column panels, Y prefilled with b
//   backward  dX = dY W          A = dY rows,         B = W packed in column panels
//             dW = dY^T X        per 256-row block: A = dY's columns copied in 48-wide strips, B = X in panels
//             db = column sums of dY, accumulated in double while dY is copied.
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
  if (int status = mfgf::check_all_float32(kName, args)) return status;
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
  if (int status = mfgf::check_all_float32(kName, args)) return status;
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

  // dW = dY^T X and db, one depth block of rows at a time (in order, so the sums do not depend on the threads).
  // Both operands are copied first: read in place, dY's columns and X's rows sit a power-of-two stride apart
  // (1 KB for 256 features), so the micro-kernel's streams fall into a few L1 sets and evict each other (measured
  // at half the forward's rate). Each strip of 48 columns of dY becomes A = [depth][48] (A(i, p) at p * 48 + i,
  // a contiguous 192-byte row per step), X becomes column panels, and db sums the same rows as they pass.
  const int depth_blocks = (m + mfgf::kDepthBlock - 1) / mfgf::kDepthBlock;
  const int64_t strips = (n + mfgf::kRowsPerTask - 1) / mfgf::kRowsPerTask;
  const int panels = mfgf::panel_count(k);
  const size_t strip_size = static_cast<size_t>(mfgf::kRowsPerTask) * mfgf::kDepthBlock;
  std::vector<float> dy_strips(strips * strip_size);
  std::vector<float> x_panels(static_cast<size_t>(panels) * mfgf::kPanelWidth * mfgf::kDepthBlock);
  std::vector<double> bias_sums(n, 0.0);
  for (int block = 0; block < depth_blocks; ++block) {
    const int p0 = block * mfgf::kDepthBlock;
    const int depth = std::min(mfgf::kDepthBlock, m - p0);
    // tasks 0 .. strips - 1 copy one strip of dY each (and add its columns into db); the others one panel of X
    mfgf::parallel_for(strips + panels, [&](int64_t task) {
      if (task < strips) {
        const int i0 = static_cast<int>(task) * mfgf::kRowsPerTask;
        const int count = std::min(mfgf::kRowsPerTask, n - i0);
        float* out = dy_strips.data() + task * strip_size;
        double* sums = bias_sums.data() + i0;
        for (int p = 0; p < depth; ++p) {
          const float* dy_row = dy + static_cast<int64_t>(p0 + p) * n + i0;
          std::copy(dy_row, dy_row + count, out + p * mfgf::kRowsPerTask);
          for (int i = 0; i < count; ++i) sums[i] += dy_row[i];
        }
        return;
      }
      const int j0 = static_cast<int>(task - strips) * mfgf::kPanelWidth;
      const int width = std::min(mfgf::kPanelWidth, k - j0);
      float* out = x_panels.data() + static_cast<size_t>(task - strips) * mfgf::kPanelWidth * depth;
      for (int p = 0; p < depth; ++p) {
        const float* x_row = x + static_cast<int64_t>(p0 + p) * k + j0;
        std::copy(x_row, x_row + width, out + p * mfgf::kPanelWidth);
        std::fill(out + p * mfgf::kPanelWidth + width, out + (p + 1) * mfgf::kPanelWidth, 0.0f);
      }
    });
    mfgf::parallel_for(strips, [&](int64_t strip) {
      const int i0 = static_cast<int>(strip) * mfgf::kRowsPerTask;
      const int count = std::min(mfgf::kRowsPerTask, n - i0);
      kernels.gemm({count, k, depth, 1.0f, dy_strips.data() + strip * strip_size, 1, mfgf::kRowsPerTask,
                    x_panels.data(), mfgf::kPanelWidth, static_cast<int64_t>(mfgf::kPanelWidth) * depth,
                    dw + static_cast<int64_t>(i0) * k, k, block > 0 ? mfgf::Accumulate::kAdd : mfgf::Accumulate::kOverwrite,
                    nullptr});
    });
  }
  for (int i = 0; i < n; ++i) db[i] = static_cast<float>(bias_sums[i]);
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> DenseBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  const mfgf::Shape x = mfgf::shape_of(ndims, shapes, 1);
  const mfgf::Shape weight = mfgf::shape_of(ndims, shapes, 2);
  return {x, weight, {weight.empty() ? -1 : weight[0]}};
}

}  // extern "C"
