// Row-wise log-sum-exp and its gradient, the cross-entropy's only pass over the whole vocabulary:
//   forward   lse[r] = m + log sum_c exp(x[r, c] - m),  m = max_c x[r, c]
//   backward  dx[r, c] = dlse[r] exp(x[r, c] - lse[r])   (the softmax, scaled by the incoming gradient)
// The loss is lse minus the label's logit (a gather, left to MindSpore, whose gradient is sparse). MindSpore's CPU
// LogSoftmaxGrad took ~290 ms per MLM step on [1,228, 25,426] masked logits (5% of the step); these are one read
// (and one write) of the logits, on the tile table's row_max and exp (the attention kernels' own).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

constexpr int kSumChunk = 512;

int check_rows(const char* kernel, const AotArgs& args, int x_index, int64_t* rows, int64_t* columns) {
  const Shape x = args.shape(x_index);
  if (x.empty()) return fail(kernel, "x must have a last (class) axis, got a scalar");
  *columns = x.back();
  *rows = *columns == 0 ? 0 : args.elements(x_index) / *columns;
  if (*columns > std::numeric_limits<int>::max()) return fail(kernel, "more than 2^31 - 1 classes");
  return 0;
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Input: x [..., C] float32. Output: lse [...] (x's shape without its last axis). A row of -inf gives -inf.
MFGF_EXPORT
int LogSumExpForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "LogSumExpForward";
  if (nparam != 2) return mfgf::fail(kName, "expected 1 input and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_all_float32(kName, args)) return status;
  int64_t rows = 0, columns = 0;
  if (int status = mfgf::check_rows(kName, args, 0, &rows, &columns)) return status;
  const float* x = args.ptr<const float>(0);
  float* lse = args.ptr<float>(1);
  const mfgf::TileKernels& kernels = mfgf::tile_kernels();
  const int width = static_cast<int>(columns);
  if (width == 0) {
    std::fill(lse, lse + args.elements(1), -std::numeric_limits<float>::infinity());
    return 0;
  }
  mfgf::parallel_for(rows, [&](int64_t row) {
    thread_local std::vector<float> scratch;  // exp_shift_sum works in place; x is read-only
    scratch.assign(x + row * width, x + (row + 1) * width);
    const float shift = kernels.row_max(scratch.data(), width);
    if (std::isinf(shift) && shift < 0) {
      lse[row] = shift;
      return;
    }
    // chunks summed in double: one float sum over 25,426 classes would carry ~1e-5 of relative error
    double sum = 0.0;
    for (int c0 = 0; c0 < width; c0 += mfgf::kSumChunk) {
      sum += kernels.exp_shift_sum(scratch.data() + c0, std::min(mfgf::kSumChunk, width - c0), shift);
    }
    lse[row] = static_cast<float>(shift + std::log(sum));
  });
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> LogSumExpForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  std::vector<int64_t> shape = mfgf::shape_of(ndims, shapes, 0);
  if (mfgf::is_unknown_rank(shape) || shape.empty()) return shape;
  shape.pop_back();
  return shape;
}

// Inputs: d_lse [...], x [..., C], lse [...], float32. Output: dx [..., C] = d_lse exp(x - lse).
MFGF_EXPORT
int LogSumExpBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "LogSumExpBackward";
  if (nparam != 4) return mfgf::fail(kName, "expected 3 inputs and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_all_float32(kName, args)) return status;
  int64_t rows = 0, columns = 0;
  if (int status = mfgf::check_rows(kName, args, 1, &rows, &columns)) return status;
  if (args.elements(0) != rows || args.elements(2) != rows) {
    return mfgf::fail(kName, "d_lse and lse must hold one value per row of x, got " +
                                 mfgf::shape_string(args.shape(0)) + ", " + mfgf::shape_string(args.shape(2)) +
                                 " for x " + mfgf::shape_string(args.shape(1)));
  }
  const float* d_lse = args.ptr<const float>(0);
  const float* x = args.ptr<const float>(1);
  const float* lse = args.ptr<const float>(2);
  float* dx = args.ptr<float>(3);
  const mfgf::TileKernels& kernels = mfgf::tile_kernels();
  const int width = static_cast<int>(columns);
  mfgf::parallel_for(rows, [&](int64_t row) {
    float* out = dx + row * width;
    std::copy(x + row * width, x + (row + 1) * width, out);
    if (std::isinf(lse[row]) && lse[row] < 0) {  // every class at -inf: no probability anywhere
      std::fill(out, out + width, 0.0f);
      return;
    }
    kernels.exp_shift_sum(out, width, lse[row]);
    kernels.scale(out, width, d_lse[row]);
  });
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> LogSumExpBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::shape_of(ndims, shapes, 1);
}

}  // extern "C"
