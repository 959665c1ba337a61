// Fused residual add + LayerNorm (the post-LN step of BERT): y = gamma * (z - mean) * rstd + beta with z = x + r,
// statistics in float32, one row of width H at a time; and its backward (kernel-maths.md):
//   g = dy * gamma;  dz = rstd * (g - mean(g) - zhat * mean(g * zhat));  dx = dresidual = dz;
//   dgamma = sum over rows of dy * zhat;  dbeta = sum over rows of dy.
// The plain LayerNorm entry points are the same code without the residual.
#include <algorithm>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

// Rows per task: enough work to amortise a task (~0.1 ms at H = 256), and the granularity of the dgamma/dbeta
// partial sums, which are added in chunk order so the result is the same on any number of threads.
constexpr int64_t kRowsPerChunk = 64;

struct RowsProblem {
  int64_t rows;
  int width;
};

// Checks x (at x_index) and the `param_count` weights [H] from param_index on; every tensor must be float32.
int read_rows(const char* kernel, const AotArgs& args, int x_index, int param_index, int param_count,
              RowsProblem* p) {
  const Shape x = args.shape(x_index);
  if (x.empty()) return fail(kernel, "the input must have at least one axis (the normalised one)");
  p->width = static_cast<int>(x.back());
  p->rows = 1;
  for (size_t axis = 0; axis + 1 < x.size(); ++axis) p->rows *= x[axis];
  if (p->width <= 0) return fail(kernel, "the normalised axis is empty");
  for (int index = 0; index < args.count; ++index) {
    if (!args.has_dtype(index, "float32")) {
      return fail(kernel, std::string("every tensor must be float32; cast before calling, got ") + args.dtypes[index]);
    }
  }
  for (int index = param_index; index < param_index + param_count; ++index) {
    if (args.shape(index) != Shape{p->width}) {
      return fail(kernel, "weight and bias must be [" + std::to_string(p->width) + "], got " +
                              shape_string(args.shape(index)));
    }
  }
  return 0;
}

void forward(const RowsProblem& p, const float* x, const float* residual, const float* gamma, const float* beta,
             float eps, float* y, float* mean, float* rstd) {
  const TileKernels& kernels = tile_kernels();
  const int64_t chunks = (p.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  parallel_for(chunks, [&](int64_t chunk) {
    const int64_t end = std::min(p.rows, (chunk + 1) * kRowsPerChunk);
    for (int64_t row = chunk * kRowsPerChunk; row < end; ++row) {
      const int64_t offset = row * p.width;
      kernels.layer_norm_row(x + offset, residual ? residual + offset : nullptr, gamma, beta, eps, p.width,
                             y + offset, mean + row, rstd + row);
    }
  });
}

void backward(const RowsProblem& p, const float* dy, const float* x, const float* residual, const float* gamma,
              const float* mean, const float* rstd, const float* dmean, const float* drstd, float* dx, float* dgamma,
              float* dbeta) {
  const TileKernels& kernels = tile_kernels();
  const int64_t chunks = (p.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  // Per chunk: dgamma partial then dbeta partial.
  std::vector<float> partials(static_cast<size_t>(chunks * 2 * p.width), 0.0f);
  parallel_for(chunks, [&](int64_t chunk) {
    float* chunk_dgamma = partials.data() + chunk * 2 * p.width;
    float* chunk_dbeta = chunk_dgamma + p.width;
    const int64_t end = std::min(p.rows, (chunk + 1) * kRowsPerChunk);
    for (int64_t row = chunk * kRowsPerChunk; row < end; ++row) {
      const int64_t offset = row * p.width;
      kernels.layer_norm_row_backward(dy + offset, x + offset, residual ? residual + offset : nullptr, gamma,
                                      mean[row], rstd[row], dmean[row], drstd[row], p.width, dx + offset,
                                      chunk_dgamma, chunk_dbeta);
    }
  });
  std::fill(dgamma, dgamma + p.width, 0.0f);
  std::fill(dbeta, dbeta + p.width, 0.0f);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const float* chunk_dgamma = partials.data() + chunk * 2 * p.width;
    const float* chunk_dbeta = chunk_dgamma + p.width;
    for (int c = 0; c < p.width; ++c) {
      dgamma[c] += chunk_dgamma[c];
      dbeta[c] += chunk_dbeta[c];
    }
  }
}

Shapes statistics_shapes(int* ndims, int64_t** shapes, int x_index, int outputs_like_x) {
  const Shape x = shape_of(ndims, shapes, x_index);
  if (is_unknown_rank(x)) return Shapes(outputs_like_x + 2, x);
  const Shape rows(x.begin(), x.end() - 1);
  Shapes result(outputs_like_x, x);
  result.push_back(rows);
  result.push_back(rows);
  return result;
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Inputs: x [..., H], residual [..., H], gamma [H], beta [H], eps [1]. Outputs: y [..., H], mean [...], rstd [...].
MFGF_EXPORT
int AddLayerNormForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "AddLayerNormForward";
  if (nparam != 8) return mfgf::fail(kName, "expected 5 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  mfgf::RowsProblem problem;
  if (int status = mfgf::read_rows(kName, args, 0, 2, 2, &problem)) return status;
  if (args.shape(1) != args.shape(0)) return mfgf::fail(kName, "x and residual must have the same shape");
  if (args.elements(4) < 1) return mfgf::fail(kName, "eps is empty");
  mfgf::forward(problem, args.ptr<const float>(0), args.ptr<const float>(1), args.ptr<const float>(2),
                args.ptr<const float>(3), *args.ptr<const float>(4), args.ptr<float>(5), args.ptr<float>(6),
                args.ptr<float>(7));
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> AddLayerNormForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::statistics_shapes(ndims, shapes, 0, 1);
}

// Inputs: dy, x, residual, gamma, mean, rstd, dmean, drstd. Outputs: dx (= dresidual) [..., H], dgamma, dbeta [H].
MFGF_EXPORT
int AddLayerNormBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "AddLayerNormBackward";
  if (nparam != 11) return mfgf::fail(kName, "expected 8 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  mfgf::RowsProblem problem;
  if (int status = mfgf::read_rows(kName, args, 1, 3, 1, &problem)) return status;
  mfgf::backward(problem, args.ptr<const float>(0), args.ptr<const float>(1), args.ptr<const float>(2),
                 args.ptr<const float>(3), args.ptr<const float>(4), args.ptr<const float>(5),
                 args.ptr<const float>(6), args.ptr<const float>(7), args.ptr<float>(8), args.ptr<float>(9),
                 args.ptr<float>(10));
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> AddLayerNormBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  const mfgf::Shape x = mfgf::shape_of(ndims, shapes, 1);
  const mfgf::Shape gamma = mfgf::shape_of(ndims, shapes, 3);
  return {x, gamma, gamma};
}

// Inputs: x [..., H], gamma [H], beta [H], eps [1]. Outputs: y, mean, rstd.
MFGF_EXPORT
int LayerNormForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "LayerNormForward";
  if (nparam != 7) return mfgf::fail(kName, "expected 4 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  mfgf::RowsProblem problem;
  if (int status = mfgf::read_rows(kName, args, 0, 1, 2, &problem)) return status;
  if (args.elements(3) < 1) return mfgf::fail(kName, "eps is empty");
  mfgf::forward(problem, args.ptr<const float>(0), nullptr, args.ptr<const float>(1), args.ptr<const float>(2),
                *args.ptr<const float>(3), args.ptr<float>(4), args.ptr<float>(5), args.ptr<float>(6));
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> LayerNormForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::statistics_shapes(ndims, shapes, 0, 1);
}

// Inputs: dy, x, gamma, mean, rstd, dmean, drstd. Outputs: dx, dgamma, dbeta.
MFGF_EXPORT
int LayerNormBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "LayerNormBackward";
  if (nparam != 10) return mfgf::fail(kName, "expected 7 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  mfgf::RowsProblem problem;
  if (int status = mfgf::read_rows(kName, args, 1, 2, 1, &problem)) return status;
  mfgf::backward(problem, args.ptr<const float>(0), args.ptr<const float>(1), nullptr, args.ptr<const float>(2),
                 args.ptr<const float>(3), args.ptr<const float>(4), args.ptr<const float>(5),
                 args.ptr<const float>(6), args.ptr<float>(7), args.ptr<float>(8), args.ptr<float>(9));
  return 0;
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> LayerNormBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  const mfgf::Shape x = mfgf::shape_of(ndims, shapes, 1);
  const mfgf::Shape gamma = mfgf::shape_of(ndims, shapes, 2);
  return {x, gamma, gamma};
}

}  // extern "C"
