// Dropout on activations (hidden states, embeddings, classifier inputs) with the attention kernel's generator:
// x viewed as [outer, rows, columns] (columns = last axis, rows = the one before, outer = the rest; a missing axis
// is 1) keeps x[o, r, c] iff dropout_word(dropout_row_key(k, r), dropout_column_code(k, c)) >> 8 >= floor(p * 2^24)
// with k = dropout_head_key(seed, o), and scales what it keeps by 1 / (1 - p): the attention mask of "head" o over a [rows, columns]
// "score matrix" (mindformer_gf.reference.dropout). y = x * factor is linear in x with a factor that depends only on
// the seed, so the backward is this same kernel applied to dy: no mask is stored.
#include <algorithm>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

// Rows per task: a task must amortise its scheduling (~1 us) over a few thousand mask entries.
constexpr int64_t kRowsPerChunk = 16;

void dropout(const float* x, float* y, int64_t outer, int64_t rows, int columns, const DropoutSpec& spec) {
  const TileKernels& kernels = tile_kernels();
  const int64_t total_rows = outer * rows;
  const int64_t chunks = (total_rows + kRowsPerChunk - 1) / kRowsPerChunk;
  parallel_for(chunks, [&](int64_t chunk) {
    std::vector<float> factor(static_cast<size_t>(columns));
    std::vector<uint32_t> codes(static_cast<size_t>(columns));  // the same for every row of one outer index
    int64_t codes_of = -1;
    const int64_t end = std::min(total_rows, (chunk + 1) * kRowsPerChunk);
    for (int64_t flat = chunk * kRowsPerChunk; flat < end; ++flat) {
      const uint32_t head_key = dropout_head_key(spec.seed, static_cast<uint32_t>(flat / rows));
      if (flat / rows != codes_of) {
        kernels.dropout_column_codes(codes.data(), columns, head_key);
        codes_of = flat / rows;
      }
      kernels.dropout_factors(factor.data(), columns, spec,
                              dropout_row_key(head_key, static_cast<uint32_t>(flat % rows)), codes.data());
      const float* in = x + flat * columns;
      float* out = y + flat * columns;
      for (int c = 0; c < columns; ++c) out[c] = in[c] * factor[c];
    }
  });
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

extern "C" {

// Inputs: x float32 [...], seed int64 [1], drop probability float32 [1]. Output: y float32, x's shape.
MFGF_EXPORT
int HashDropout(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  constexpr const char* kName = "HashDropout";
  if (nparam != 4) return mfgf::fail(kName, "expected 3 inputs and 1 output, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  if (!args.has_dtype(0, "float32") || !args.has_dtype(3, "float32")) {
    return mfgf::fail(kName, std::string("x must be float32; cast before calling, got ") + args.dtypes[0]);
  }
  if (!args.has_dtype(1, "int64") || !args.has_dtype(2, "float32")) {
    return mfgf::fail(kName, "the seed must be int64 and the drop probability float32");
  }
  if (args.elements(1) < 1 || args.elements(2) < 1) return mfgf::fail(kName, "the seed and drop probability are empty");
  const mfgf::Shape x = args.shape(0);
  const int64_t columns = x.empty() ? 1 : x.back();
  const int64_t rows = x.size() < 2 ? 1 : x[x.size() - 2];
  const int64_t elements = args.elements(0);
  if (elements == 0) return 0;
  const int64_t outer = elements / (rows * columns);
  if (columns > 0xFFFFFFFFLL || rows > 0xFFFFFFFFLL || outer > 0xFFFFFFFFLL) {
    return mfgf::fail(kName, "an axis exceeds 2^32 elements, more than the dropout hash's 32-bit indices address");
  }
  const float drop = *args.ptr<const float>(2);
  if (!(drop >= 0.0f && drop < 1.0f)) return mfgf::fail(kName, "the drop probability must be in [0, 1)");
  const float* in = args.ptr<const float>(0);
  float* out = args.ptr<float>(3);
  if (drop == 0.0f) {
    std::copy(in, in + elements, out);
    return 0;
  }
  const uint64_t seed = static_cast<uint64_t>(*args.ptr<const int64_t>(1));
  const mfgf::DropoutSpec spec{true, seed, mfgf::dropout_threshold(drop), 1.0f / (1.0f - drop)};
  mfgf::dropout(in, out, outer, rows, static_cast<int>(columns), spec);
  return 0;
}

// A single-output operator's shape function returns one shape (MindSpore's AOT convention), not a list of them.
MFGF_EXPORT
std::vector<int64_t> HashDropoutInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  return mfgf::shape_of(ndims, shapes, 0);
}

}  // extern "C"
