// Exact (erf) GELU, forward and backward: y = x Phi(x), dx = dy (Phi(x) + x phi(x)), elementwise over any shape.
// The arithmetic is the tile table's (gelu / gelu_backward in tile_kernels.h); this file splits the tensor into
// chunks for the thread pool and holds the MindSpore entry points.
#include <algorithm>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

// Elements per task: ~20 us of work at the AVX2 rate, 64 KB in and out (L2-sized), and few enough tasks per call
// that scheduling (~1 us each) stays below 5 %. A multiple of 16 so only the last chunk has a vector tail.
constexpr int64_t kElementsPerChunk = 16384;

const TileKernels& gelu_kernels() {
  const TileKernels& chosen = tile_kernels();
  return chosen.gelu ? chosen : portable_tile_kernels();
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Input: x float32 [...]. Output: y float32, x's shape.
MFGF_EXPORT
int GeluForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "GeluForward";
  if (nparam != 2) return mfgf::fail(kName, "expected 1 input and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_all_float32(kName, args)) return status;
  const int64_t elements = args.elements(0);
  const float* x = args.ptr<const float>(0);
  float* y = args.ptr<float>(1);
  const mfgf::TileKernels& kernels = mfgf::gelu_kernels();
  const int64_t chunks = (elements + mfgf::kElementsPerChunk - 1) / mfgf::kElementsPerChunk;
  mfgf::parallel_for(chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * mfgf::kElementsPerChunk;
    const int count = static_cast<int>(std::min(mfgf::kElementsPerChunk, elements - begin));
    kernels.gelu(x + begin, y + begin, count);
  });
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> GeluForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::shape_of(ndims, shapes, 0);
}

// Inputs: dy, x float32 of one shape. Output: dx, that shape.
MFGF_EXPORT
int GeluBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "GeluBackward";
  if (nparam != 3) return mfgf::fail(kName, "expected 2 inputs and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (int status = mfgf::check_all_float32(kName, args)) return status;
  if (args.shape(0) != args.shape(1)) {
    return mfgf::fail(kName, "dy and x must have the same shape, got " + mfgf::shape_string(args.shape(0)) + " and " +
                                 mfgf::shape_string(args.shape(1)));
  }
  const int64_t elements = args.elements(1);
  const float* dy = args.ptr<const float>(0);
  const float* x = args.ptr<const float>(1);
  float* dx = args.ptr<float>(2);
  const mfgf::TileKernels& kernels = mfgf::gelu_kernels();
  const int64_t chunks = (elements + mfgf::kElementsPerChunk - 1) / mfgf::kElementsPerChunk;
  mfgf::parallel_for(chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * mfgf::kElementsPerChunk;
    const int count = static_cast<int>(std::min(mfgf::kElementsPerChunk, elements - begin));
    kernels.gelu_backward(dy + begin, x + begin, dx + begin, count);
  });
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> GeluBackwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::shape_of(ndims, shapes, 1);
}

}  // extern "C"
