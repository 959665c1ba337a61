// The optimiser step in place: the global gradient norm of the flat gradient buffer, and AdamW over the flat
// gradient and moment buffers and every parameter, writing parameters and moments where they are and clearing the
// gradient buffer. MindSpore's graph of the same update keeps a full-size buffer for each of its ~18 intermediate
// tensors (41 MB each for a 10M-parameter model); this keeps none.
//
// In place: MindSpore hands an AOT kernel the device memory of its inputs. For a Parameter that is the parameter's
// own storage, so these kernels write there (through the input pointers) and their declared outputs are small
// status tensors. The caller (mindformer_gf.train.step) orders them after every read of those buffers in the graph.
//
// Rounding: every operation is one IEEE float32 operation in the order of mindformer_gf.train.optim.AdamW's graph
// (no fused multiply-add: this file is compiled without FMA and without -ffast-math), so the update is bit-for-bit
// the graph's. The per-element work is a handful of loads and stores; threads split the flat vectors in chunks.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"

// Bit-for-bit with the graph's separate multiply and add even if someone builds with -mfma or -march=native.
#pragma GCC optimize("fp-contract=off")

namespace mfgf {
namespace {

// Elements per task: large enough to amortise scheduling, small enough to balance two to a few dozen threads.
constexpr int64_t kChunk = 1 << 16;

// Layout of the hyper-parameter vector (float32), filled by mindformer_gf.train.optim.FusedAdamW.
enum Hyper : int {
  kGradScale = 0,  // gradient = (buffer * grad_scale) * clip_scale: normalisation, then clipping
  kClipScale,
  kLearningRate,
  kStepSize,  // lr / (1 - beta1^t)
  kBias2Sqrt,  // sqrt(1 - beta2^t)
  kEps,
  kBeta1,
  kOneMinusBeta1,
  kBeta2,
  kOneMinusBeta2,
  kApply,  // nonzero: update; zero: leave parameters and moments as they are (the gradient buffer is still cleared)
  kHyperCount
};

struct Segment {
  float* param;
  int64_t start;  // offset in the flat vectors
  int64_t size;
  float decay_factor;  // 1 - lr * weight_decay, or exactly 1 without weight decay
  bool decays;
};

void adamw(float* grad, float* exp_avg, float* exp_avg_sq, const float* hyper, const std::vector<Segment>& segments) {
  const float grad_scale = hyper[kGradScale], clip_scale = hyper[kClipScale];
  const float step_size = hyper[kStepSize], bias2_sqrt = hyper[kBias2Sqrt], eps = hyper[kEps];
  const float beta1 = hyper[kBeta1], one_minus_beta1 = hyper[kOneMinusBeta1];
  const float beta2 = hyper[kBeta2], one_minus_beta2 = hyper[kOneMinusBeta2];
  const bool apply = hyper[kApply] != 0.0f;
  // chunks never straddle a parameter, so each task's inner loop is one straight vectorisable pass
  struct Piece {
    const Segment* segment;
    int64_t begin, end;  // offsets inside the segment
  };
  std::vector<Piece> pieces;
  for (const Segment& segment : segments) {
    for (int64_t begin = 0; begin < segment.size; begin += kChunk) {
      pieces.push_back({&segment, begin, std::min(segment.size, begin + kChunk)});
    }
  }
  parallel_for(static_cast<int64_t>(pieces.size()), [&](int64_t index) {
    const Piece& piece = pieces[static_cast<size_t>(index)];
    const Segment& segment = *piece.segment;
    float* g = grad + segment.start;
    if (apply) {
      float* m = exp_avg + segment.start;
      float* v = exp_avg_sq + segment.start;
      float* p = segment.param;
      const float factor = segment.decay_factor;
      for (int64_t i = piece.begin; i < piece.end; ++i) {
        const float gi = (g[i] * grad_scale) * clip_scale;
        const float mi = beta1 * m[i] + one_minus_beta1 * gi;
        const float vi = beta2 * v[i] + (one_minus_beta2 * gi) * gi;
        const float update = (step_size * mi) / (std::sqrt(vi) / bias2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = (segment.decays ? p[i] * factor : p[i]) - update;
      }
    }
    std::fill(g + piece.begin, g + piece.end, 0.0f);
  });
}

// Sum of squares of (buffer * scale) in float64, per chunk then in chunk order (independent of thread timing).
double scaled_sum_of_squares(const float* grad, int64_t size, float scale) {
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, [&](int64_t chunk) {
    const int64_t end = std::min(size, (chunk + 1) * kChunk);
    double sum = 0.0;
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      const double gi = static_cast<double>(grad[i] * scale);
      sum += gi * gi;
    }
    partial[static_cast<size_t>(chunk)] = sum;
  });
  double total = 0.0;
  for (double sum : partial) total += sum;
  return total;
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Inputs: gradient buffer float32 [N]; scale float32 [1]. Output: float32 [2] = (norm of buffer * scale, finite),
// finite = 1 when every scaled element and the norm are finite, else 0. Reads only.
MFGF_EXPORT
int FlatGradNorm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "FlatGradNorm";
  if (nparam != 3) return mfgf::fail(kName, "expected 2 inputs and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  for (int index = 0; index < 3; ++index) {
    if (!args.has_dtype(index, "float32")) return mfgf::fail(kName, "every tensor must be float32");
  }
  if (args.elements(1) < 1 || args.elements(2) < 2) return mfgf::fail(kName, "the scale is empty");
  const float scale = *args.ptr<const float>(1);
  // a non-finite element makes the float64 sum non-finite; finite float32 squares cannot overflow float64
  const double sum = mfgf::scaled_sum_of_squares(args.ptr<const float>(0), args.elements(0), scale);
  const float norm = static_cast<float>(std::sqrt(sum));
  float* out = args.ptr<float>(2);
  out[0] = norm;
  out[1] = (std::isfinite(sum) && std::isfinite(norm)) ? 1.0f : 0.0f;
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> FlatGradNormInferShape(int*, int64_t**, mindspore::AotExtra*) { return {2}; }

// Inputs: gradient buffer, first moment, second moment (float32 [N] each); hyper-parameters float32 [11] (see Hyper);
// weight decays float32 [P]; then the P parameters (float32, any shape, N elements in all, in the flat vectors'
// order). Output: float32 [1], the apply flag. Writes the parameters and moments in place (when applying) and zeroes
// the gradient buffer (always).
MFGF_EXPORT
int FusedAdamW(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "FusedAdamW";
  constexpr int kFixedInputs = 5;
  if (nparam < kFixedInputs + 2) {
    return mfgf::fail(kName, "expected the buffers, hyper-parameters, decays, parameters and 1 output");
  }
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  for (int index = 0; index < nparam; ++index) {
    if (!args.has_dtype(index, "float32")) {
      return mfgf::fail(kName, "tensor " + std::to_string(index) + " is " + args.dtypes[index] + ", expected float32");
    }
  }
  const int count = nparam - kFixedInputs - 1;
  const int64_t total = args.elements(0);
  if (args.elements(1) != total || args.elements(2) != total) {
    return mfgf::fail(kName, "the gradient and moment buffers differ in size");
  }
  if (args.elements(3) != mfgf::kHyperCount) {
    return mfgf::fail(kName, "expected " + std::to_string(mfgf::kHyperCount) + " hyper-parameters");
  }
  if (args.elements(4) != count) {
    return mfgf::fail(kName, "one weight decay per parameter: " + std::to_string(args.elements(4)) + " decays, " +
                                 std::to_string(count) + " parameters");
  }
  const float* hyper = args.ptr<const float>(3);
  const float* decays = args.ptr<const float>(4);
  const float lr = hyper[mfgf::kLearningRate];
  std::vector<mfgf::Segment> segments;
  int64_t start = 0;
  for (int index = 0; index < count; ++index) {
    const int64_t size = args.elements(kFixedInputs + index);
    const float decay = decays[index];
    // as the graph: param * (1 - lr * decay), two float32 operations
    const float factor = 1.0f - lr * decay;
    segments.push_back({args.ptr<float>(kFixedInputs + index), start, size, factor, decay != 0.0f});
    start += size;
  }
  if (start != total) {
    return mfgf::fail(kName, "the parameters hold " + std::to_string(start) + " values, the buffers " +
                                 std::to_string(total));
  }
  mfgf::adamw(args.ptr<float>(0), args.ptr<float>(1), args.ptr<float>(2), hyper, segments);
  *args.ptr<float>(nparam - 1) = hyper[mfgf::kApply];
  return 0;
}

MFGF_EXPORT
std::vector<int64_t> FusedAdamWInferShape(int*, int64_t**, mindspore::AotExtra*) { return {1}; }

}  // extern "C"
