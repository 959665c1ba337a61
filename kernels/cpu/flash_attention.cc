// Fused attention over [batch, heads, length, head_dim] with a key-padding mask: FlashAttention-2 (Dao, 2023) on
// CPU cores. See kernels/cpu/README.md; the maths followed here is mindformer_gf/reference/attention.py.
//
// Forward, per (cell, head) and block of Br query rows Qi, walking key blocks Kj, Vj of Bc keys:
//   Sij = s Qi Kj^T;  m' = max(m, rowmax Sij);  Pij = exp(Sij - m');  l = exp(m - m') l + rowsum Pij;
//   Oi = diag(exp(m - m')) Oi + (Pij o Zij) Vj;  m = m'        and at the end Oi /= l, LSE = m + log l,
// where Zij is the dropout mask scaled by 1/(1-p) (all ones in inference). The L x L matrix never exists: only one
// Br x Bc tile of S/P per thread.
//
// Backward, per (cell, head) and key block j, walking query blocks i:
//   Pij = exp(s Qi Kj^T - LSE_i);  dVj += (Pij o Zij)^T dOi;  dPij = (dOi Vj^T) o Zij;
//   dSij = Pij o (dPij - D_i) with D_i = rowsum(dOi o Oi) - dLSE_i;  dQi += s dSij Kj;  dKj += s dSij^T Qi.
// (D = rowsum(dO o O) holds with dropout too: rowsum(P o Z o (dO V^T)) = dO . ((P o Z) V) = dO . O.)
//
// Keys: the mask row of each cell is split into key blocks once per launch. A right-padded cell (the Geneformer
// case) has blocks covering exactly its n valid keys, so padding costs nothing and never enters a sum; any other
// mask works too, with blocks that hold no valid key skipped and invalid columns of the others set to -inf.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "aot_abi.h"
#include "parallel.h"
#include "tile_kernels.h"

namespace mfgf {
namespace {

// Br x Bc. Br is a multiple of the GEMM micro-kernel's 6 rows, so only the last block of a head has a ragged
// strip; one S tile (72 x 128 floats = 36 KB), the K^T panels of one key block (32 KB at d = 64) and that block
// of V stay in L2 while a query block walks them. Measured flat within noise from 48 to 96 rows and 64 to 256 keys.
constexpr int kQueryBlock = 72;
constexpr int kKeyBlock = 128;
static_assert(kKeyBlock % kPanelWidth == 0, "key blocks must start on a packed panel boundary");

struct KeyBlock {
  int64_t start;
  int width;
  bool has_invalid_columns;
};

struct CellKeys {
  std::vector<KeyBlock> blocks;
  int64_t extent = 0;  // keys [0, extent) cover every block
  const int32_t* mask = nullptr;
};

CellKeys split_keys(const int32_t* mask, int64_t length) {
  CellKeys cell;
  cell.mask = mask;
  int64_t valid = 0;
  for (int64_t j = 0; j < length; ++j) valid += mask[j] != 0;
  bool prefix = true;
  for (int64_t j = 0; j < valid; ++j) prefix = prefix && mask[j] != 0;
  cell.extent = prefix ? valid : length;
  for (int64_t start = 0; start < cell.extent; start += kKeyBlock) {
    const int width = static_cast<int>(std::min<int64_t>(kKeyBlock, cell.extent - start));
    int in_block = width;
    if (!prefix) {
      in_block = 0;
      for (int c = 0; c < width; ++c) in_block += mask[start + c] != 0;
    }
    if (in_block > 0) cell.blocks.push_back({start, width, in_block < width});
  }
  return cell;
}

// Per-thread scratch memory that survives between launches (a thread runs one task at a time).
float* scratch(size_t floats) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

// M (rows x head_dim, rows `stride` floats apart) -> column panels of kPanelWidth rows of M, each head_dim x
// kPanelWidth: the layout `gemm` streams as B for S = Q K^T and dP = dO V^T. Rows past `rows` are zero.
void pack_transposed_panels(const float* m, int64_t rows, int head_dim, int64_t stride, float* panels) {
  const int64_t panel_count = (rows + kPanelWidth - 1) / kPanelWidth;
  for (int64_t panel = 0; panel < panel_count; ++panel) {
    float* out = panels + panel * head_dim * kPanelWidth;
    for (int c = 0; c < kPanelWidth; ++c) {
      const int64_t row = panel * kPanelWidth + c;
      if (row < rows) {
        const float* in = m + row * stride;
        for (int k = 0; k < head_dim; ++k) out[k * kPanelWidth + c] = in[k];
      } else {
        for (int k = 0; k < head_dim; ++k) out[k * kPanelWidth + c] = 0.0f;
      }
    }
  }
}

// M (rows x head_dim, rows `stride` floats apart) -> column panels of kPanelWidth columns of M, each rows x
// kPanelWidth (columns past head_dim zero): V as `gemm` streams it for O += P V, contiguous whatever the layout
// the heads arrive in.
void pack_column_panels(const float* m, int64_t rows, int head_dim, int64_t stride, float* panels) {
  const int panel_count = (head_dim + kPanelWidth - 1) / kPanelWidth;
  for (int panel = 0; panel < panel_count; ++panel) {
    float* out = panels + panel * rows * kPanelWidth;
    const int c0 = panel * kPanelWidth, cols = std::min(kPanelWidth, head_dim - c0);
    for (int64_t row = 0; row < rows; ++row) {
      const float* in = m + row * stride + c0;
      float* o = out + row * kPanelWidth;
      std::memcpy(o, in, sizeof(float) * cols);
      std::fill(o + cols, o + kPanelWidth, 0.0f);
    }
  }
}

void fill_rows(float* m, int64_t row_begin, int64_t row_end, int width, int64_t stride) {
  for (int64_t row = row_begin; row < row_end; ++row) std::fill(m + row * stride, m + row * stride + width, 0.0f);
}

void mask_invalid_columns(const CellKeys& cell, const KeyBlock& block, float* s, int rows, int ld) {
  if (!block.has_invalid_columns) return;
  for (int c = 0; c < block.width; ++c) {
    if (cell.mask[block.start + c] != 0) continue;
    for (int r = 0; r < rows; ++r) s[r * ld + c] = -std::numeric_limits<float>::infinity();
  }
}

struct AttentionProblem {
  int64_t batch, heads, length;
  int head_dim;
  // [B, L, H, D] instead of [B, H, L, D] for q, k, v, O and their gradients (LSE stays [B, H, L]): the layout the
  // Q/K/V projections produce, so the model needs no head transposes around the kernel.
  bool sequence_major;
  const float *q, *k, *v;
  const int32_t* mask;
  float scale;
  DropoutSpec dropout;

  int64_t head_size() const { return length * head_dim; }
  // Distance between consecutive positions of one head, and where head `pair` = cell * heads + head starts.
  int64_t row_stride() const { return sequence_major ? heads * head_dim : head_dim; }
  int64_t head_offset(int64_t pair) const {
    return sequence_major ? (pair / heads) * length * heads * head_dim + (pair % heads) * head_dim
                          : pair * head_size();
  }
};

// Tasks: (cell, head) pairs, each split further into `groups` contiguous ranges of blocks when there are too few
// pairs to keep every thread busy (one long cell at inference).
int64_t split_count(int64_t pairs, int64_t blocks) {
  const int64_t wanted = 4 * static_cast<int64_t>(num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(blocks, (wanted + pairs - 1) / pairs));
}

void attention_forward(const AttentionProblem& p, float* out, float* lse) {
  const TileKernels& kernels = tile_kernels();
  const int d = p.head_dim;
  const int64_t rs = p.row_stride();
  std::vector<CellKeys> cells(p.batch);
  for (int64_t b = 0; b < p.batch; ++b) cells[b] = split_keys(p.mask + b * p.length, p.length);

  const int64_t pairs = p.batch * p.heads;
  const int64_t query_blocks = (p.length + kQueryBlock - 1) / kQueryBlock;
  const int64_t groups = split_count(pairs, query_blocks);

  parallel_for(pairs * groups, [&](int64_t task) {
    const int64_t pair = task / groups, group = task % groups;
    const CellKeys& cell = cells[pair / p.heads];
    const int64_t first_block = query_blocks * group / groups, end_block = query_blocks * (group + 1) / groups;
    const int64_t row_begin = first_block * kQueryBlock, row_end = std::min(p.length, end_block * kQueryBlock);
    float* o_head = out + p.head_offset(pair);
    float* lse_head = lse + pair * p.length;
    if (cell.blocks.empty()) {
      // No valid key: the output is 0 (as in the composed path) and the LSE a finite 0 that nothing reads.
      fill_rows(o_head, row_begin, row_end, d, rs);
      std::fill(lse_head + row_begin, lse_head + row_end, 0.0f);
      return;
    }
    const float* q = p.q + p.head_offset(pair);
    const float* k = p.k + p.head_offset(pair);
    const float* v = p.v + p.head_offset(pair);
    const int64_t panel_floats = (cell.extent + kPanelWidth - 1) / kPanelWidth * d * kPanelWidth;
    const int64_t v_panel_floats = cell.extent * ((d + kPanelWidth - 1) / kPanelWidth) * kPanelWidth;
    const int64_t block_floats = int64_t{kQueryBlock} * d;
    float* memory = scratch(panel_floats + v_panel_floats + 2 * block_floats + kQueryBlock * kKeyBlock + kKeyBlock +
                            3 * kQueryBlock);
    float* k_panels = memory;
    float* v_panels = k_panels + panel_floats;
    // Qi and Oi as contiguous rows: the GEMMs then see the same strides in both layouts.
    float* q_block = v_panels + v_panel_floats;
    float* o = q_block + block_floats;
    float* s = o + block_floats;                 // Br x Bc tile: S, then P in place
    float* keep = s + kQueryBlock * kKeyBlock;  // one row of dropout factors
    float* row_max = keep + kKeyBlock;          // m
    float* row_sum = row_max + kQueryBlock;     // l
    float* rescale = row_sum + kQueryBlock;     // exp(m_old - m_new)
    pack_transposed_panels(k, cell.extent, d, rs, k_panels);
    pack_column_panels(v, cell.extent, d, rs, v_panels);
    // Dropout: the head's key, its query block's row keys, the key block's column codes (tile_kernels.h).
    const uint32_t head_key = dropout_head_key(p.dropout.seed, static_cast<uint32_t>(pair));
    uint32_t row_keys[kQueryBlock];
    uint32_t codes[kKeyBlock];

    for (int64_t i0 = row_begin; i0 < row_end; i0 += kQueryBlock) {
      const int rows = static_cast<int>(std::min<int64_t>(kQueryBlock, row_end - i0));
      for (int r = 0; r < rows; ++r) std::memcpy(q_block + r * d, q + (i0 + r) * rs, sizeof(float) * d);
      std::fill(row_max, row_max + rows, -std::numeric_limits<float>::infinity());
      std::fill(row_sum, row_sum + rows, 0.0f);
      if (p.dropout.enabled) {
        for (int r = 0; r < rows; ++r) row_keys[r] = dropout_row_key(head_key, static_cast<uint32_t>(i0 + r));
      }
      bool first = true;
      for (const KeyBlock& block : cell.blocks) {
        const int width = block.width;
        if (p.dropout.enabled) kernels.dropout_column_codes(codes, width, head_key + static_cast<uint32_t>(block.start));
        kernels.gemm({rows, width, d, p.scale, q_block, d, 1, k_panels + block.start * d, kPanelWidth,
                      int64_t{d} * kPanelWidth, s, kKeyBlock, Accumulate::kOverwrite, nullptr});
        mask_invalid_columns(cell, block, s, rows, kKeyBlock);
        for (int r = 0; r < rows; ++r) {
          float* p_row = s + r * kKeyBlock;
          // Every processed block holds a valid key, so new_max is finite and the rescale well defined.
          const float new_max = std::max(row_max[r], kernels.row_max(p_row, width));
          rescale[r] = first ? 0.0f : std::exp(row_max[r] - new_max);
          row_sum[r] = rescale[r] * row_sum[r] + kernels.exp_shift_sum(p_row, width, new_max);
          row_max[r] = new_max;
          if (p.dropout.enabled) {
            // The normaliser l sums the probabilities before dropout; only the P V product sees the mask.
            kernels.dropout_factors(keep, width, p.dropout, row_keys[r], codes);
            kernels.multiply(p_row, keep, width);
          }
        }
        kernels.gemm({rows, d, width, 1.0f, s, kKeyBlock, 1, v_panels + block.start * kPanelWidth, kPanelWidth,
                      cell.extent * kPanelWidth, o, d,
                      first ? Accumulate::kOverwrite : Accumulate::kRowScaled, rescale});
        first = false;
      }
      for (int r = 0; r < rows; ++r) {
        kernels.scale(o + r * d, d, 1.0f / row_sum[r]);
        std::memcpy(o_head + (i0 + r) * rs, o + r * d, sizeof(float) * d);
        lse_head[i0 + r] = row_max[r] + std::log(row_sum[r]);
      }
    }
  });
}

void zero_uncovered_keys(const CellKeys& cell, int64_t length, int head_dim, int64_t stride, float* gradient) {
  int64_t covered_end = 0;
  for (const KeyBlock& block : cell.blocks) {
    fill_rows(gradient, covered_end, block.start, head_dim, stride);
    covered_end = block.start + block.width;
  }
  fill_rows(gradient, covered_end, length, head_dim, stride);
}

struct AttentionGradients {
  const float *out, *lse, *d_out, *d_lse;
};

void attention_backward(const AttentionProblem& p, const AttentionGradients& in, float* dq, float* dk, float* dv) {
  const TileKernels& kernels = tile_kernels();
  const int d = p.head_dim;
  const int64_t rs = p.row_stride();
  std::vector<CellKeys> cells(p.batch);
  size_t most_blocks = 1;
  for (int64_t b = 0; b < p.batch; ++b) {
    cells[b] = split_keys(p.mask + b * p.length, p.length);
    most_blocks = std::max(most_blocks, cells[b].blocks.size());
  }
  const int64_t pairs = p.batch * p.heads;
  const int64_t groups = split_count(pairs, static_cast<int64_t>(most_blocks));
  // Key-block groups of one (cell, head) all add into dQ: each group gets its own copy, summed in group order
  // afterwards so the result does not depend on thread timing.
  std::vector<float> dq_partials(static_cast<size_t>((groups - 1) * pairs * p.head_size()));

  parallel_for(pairs * groups, [&](int64_t task) {
    const int64_t pair = task / groups, group = task % groups;
    const CellKeys& cell = cells[pair / p.heads];
    // The partial copies are contiguous [L, D]; group 0 writes dQ in the problem's layout.
    float* dq_head = group == 0 ? dq + p.head_offset(pair)
                                : dq_partials.data() + ((group - 1) * pairs + pair) * p.head_size();
    const int64_t dq_stride = group == 0 ? rs : d;
    fill_rows(dq_head, 0, p.length, d, dq_stride);
    const int64_t block_count = static_cast<int64_t>(cell.blocks.size());
    const int64_t first_block = block_count * group / groups, end_block = block_count * (group + 1) / groups;
    if (group == 0) {
      // Keys outside every block (padding) get no gradient. Only those: the blocks belong to the groups, which may
      // be writing them concurrently.
      zero_uncovered_keys(cell, p.length, d, rs, dk + p.head_offset(pair));
      zero_uncovered_keys(cell, p.length, d, rs, dv + p.head_offset(pair));
    }
    if (first_block == end_block) return;

    const float* q = p.q + p.head_offset(pair);
    const float* k = p.k + p.head_offset(pair);
    const float* v = p.v + p.head_offset(pair);
    const float* o = in.out + p.head_offset(pair);
    const float* d_o = in.d_out + p.head_offset(pair);
    const float* lse = in.lse + pair * p.length;
    const float* d_lse = in.d_lse + pair * p.length;
    const int64_t key_begin = cell.blocks[first_block].start;
    const int64_t key_end = cell.blocks[end_block - 1].start + cell.blocks[end_block - 1].width;
    const int64_t panel_floats = (key_end - key_begin + kPanelWidth - 1) / kPanelWidth * d * kPanelWidth;
    const int64_t tile = int64_t{kQueryBlock} * kKeyBlock;
    float* memory = scratch(2 * panel_floats + 3 * tile + 2 * int64_t{kKeyBlock} * d + p.length);
    float* k_panels = memory;
    float* v_panels = k_panels + panel_floats;
    float* probs = v_panels + panel_floats;  // P
    float* dropped = probs + tile;           // the dropout factors Z, then P o Z in place
    float* ds = dropped + tile;              // dP, then dS in place
    float* dk_block = ds + tile;
    float* dv_block = dk_block + int64_t{kKeyBlock} * d;
    float* row_delta = dv_block + int64_t{kKeyBlock} * d;  // D_i
    pack_transposed_panels(k + key_begin * rs, key_end - key_begin, d, rs, k_panels);
    pack_transposed_panels(v + key_begin * rs, key_end - key_begin, d, rs, v_panels);
    for (int64_t i = 0; i < p.length; ++i) row_delta[i] = kernels.dot(d_o + i * rs, o + i * rs, d) - d_lse[i];
    // Dropout regenerates the forward's factors: the same head key, row keys and column codes.
    const uint32_t head_key = dropout_head_key(p.dropout.seed, static_cast<uint32_t>(pair));
    uint32_t codes[kKeyBlock];

    for (int64_t index = first_block; index < end_block; ++index) {
      const KeyBlock& block = cell.blocks[index];
      const int width = block.width;
      const int64_t panel_offset = (block.start - key_begin) * d;
      std::fill(dk_block, dk_block + int64_t{width} * d, 0.0f);
      std::fill(dv_block, dv_block + int64_t{width} * d, 0.0f);
      if (p.dropout.enabled) kernels.dropout_column_codes(codes, width, head_key + static_cast<uint32_t>(block.start));
      for (int64_t i0 = 0; i0 < p.length; i0 += kQueryBlock) {
        const int rows = static_cast<int>(std::min<int64_t>(kQueryBlock, p.length - i0));
        kernels.gemm({rows, width, d, p.scale, q + i0 * rs, rs, 1, k_panels + panel_offset, kPanelWidth,
                      int64_t{d} * kPanelWidth, probs, kKeyBlock, Accumulate::kOverwrite, nullptr});
        mask_invalid_columns(cell, block, probs, rows, kKeyBlock);
        for (int r = 0; r < rows; ++r) {
          float* p_row = probs + r * kKeyBlock;
          kernels.exp_shift_sum(p_row, width, lse[i0 + r]);
          float* zp_row = dropped + r * kKeyBlock;
          if (p.dropout.enabled) {
            kernels.dropout_factors(zp_row, width, p.dropout,
                                    dropout_row_key(head_key, static_cast<uint32_t>(i0 + r)), codes);
          }
        }
        // dP = dO V^T (before the mask), then dS = P o (dP o Z - D); the factors Z are still in `dropped`.
        kernels.gemm({rows, width, d, 1.0f, d_o + i0 * rs, rs, 1, v_panels + panel_offset, kPanelWidth,
                      int64_t{d} * kPanelWidth, ds, kKeyBlock, Accumulate::kOverwrite, nullptr});
        for (int r = 0; r < rows; ++r) {
          const float* factors = p.dropout.enabled ? dropped + r * kKeyBlock : nullptr;
          kernels.softmax_grad(ds + r * kKeyBlock, probs + r * kKeyBlock, factors, row_delta[i0 + r], width);
          if (p.dropout.enabled) kernels.multiply(dropped + r * kKeyBlock, probs + r * kKeyBlock, width);
        }
        const float* p_used = p.dropout.enabled ? dropped : probs;
        kernels.gemm({width, d, rows, 1.0f, p_used, 1, kKeyBlock, d_o + i0 * rs, rs, kPanelWidth, dv_block, d,
                      Accumulate::kAdd, nullptr});
        kernels.gemm({rows, d, width, p.scale, ds, kKeyBlock, 1, k + block.start * rs, rs, kPanelWidth,
                      dq_head + i0 * dq_stride, dq_stride, Accumulate::kAdd, nullptr});
        kernels.gemm({width, d, rows, p.scale, ds, 1, kKeyBlock, q + i0 * rs, rs, kPanelWidth, dk_block, d,
                      Accumulate::kAdd, nullptr});
      }
      float* dk_rows = dk + p.head_offset(pair) + block.start * rs;
      float* dv_rows = dv + p.head_offset(pair) + block.start * rs;
      for (int c = 0; c < width; ++c) {
        std::memcpy(dk_rows + c * rs, dk_block + c * d, sizeof(float) * d);
        std::memcpy(dv_rows + c * rs, dv_block + c * d, sizeof(float) * d);
      }
    }
  });

  if (groups > 1) {
    parallel_for(pairs, [&](int64_t pair) {
      float* total = dq + p.head_offset(pair);
      for (int64_t group = 1; group < groups; ++group) {
        const float* part = dq_partials.data() + ((group - 1) * pairs + pair) * p.head_size();
        for (int64_t row = 0; row < p.length; ++row) {
          for (int c = 0; c < d; ++c) total[row * rs + c] += part[row * d + c];
        }
      }
    });
  }
}

// Inputs shared by forward and backward: q, k, v [B, H, L, D] ([B, L, H, D] when sequence_major) float32, key mask
// [B, L] int32 (nonzero = valid), dropout seed int64 (one element), drop probability float32 (one element; 0 = no
// dropout).
int read_problem(const char* kernel, const AotArgs& args, bool sequence_major, AttentionProblem* p) {
  const char* layout = sequence_major ? "[batch, length, heads, head_dim]" : "[batch, heads, length, head_dim]";
  for (int index = 0; index < 3; ++index) {
    if (!args.has_dtype(index, "float32")) {
      return fail(kernel, std::string("query, key and value must be float32, got ") + args.dtypes[index]);
    }
    if (args.ndims[index] != 4) {
      return fail(kernel, std::string("query, key and value must be ") + layout + ", got " +
                              shape_string(args.shape(index)));
    }
  }
  if (args.shape(1) != args.shape(0) || args.shape(2) != args.shape(0)) {
    return fail(kernel, "key " + shape_string(args.shape(1)) + " and value " + shape_string(args.shape(2)) +
                            " must have the query's shape " + shape_string(args.shape(0)));
  }
  p->sequence_major = sequence_major;
  p->batch = args.dim(0, 0);
  p->heads = args.dim(0, sequence_major ? 2 : 1);
  p->length = args.dim(0, sequence_major ? 1 : 2);
  p->head_dim = static_cast<int>(args.dim(0, 3));
  if (!args.has_dtype(3, "int32") || args.ndims[3] != 2 || args.dim(3, 0) != p->batch ||
      args.dim(3, 1) != p->length) {
    return fail(kernel, "the key mask must be int32 [batch, length] = [" + std::to_string(p->batch) + ", " +
                            std::to_string(p->length) + "], got " + args.dtypes[3] + " " +
                            shape_string(args.shape(3)));
  }
  if (!args.has_dtype(4, "int64") || !args.has_dtype(5, "float32")) {
    return fail(kernel, std::string("the dropout seed must be int64 and the drop probability float32, got ") +
                            args.dtypes[4] + " and " + args.dtypes[5]);
  }
  if (p->head_dim < 1 || p->head_dim > 1024) return fail(kernel, "head_dim must be in [1, 1024]");
  if (args.elements(4) < 1 || args.elements(5) < 1) return fail(kernel, "the seed and drop probability are empty");
  p->q = args.ptr<const float>(0);
  p->k = args.ptr<const float>(1);
  p->v = args.ptr<const float>(2);
  p->mask = args.ptr<const int32_t>(3);
  p->scale = 1.0f / std::sqrt(static_cast<float>(p->head_dim));
  const uint64_t seed = static_cast<uint64_t>(*args.ptr<const int64_t>(4));
  const float drop = *args.ptr<const float>(5);
  if (!(drop >= 0.0f && drop < 1.0f)) return fail(kernel, "the drop probability must be in [0, 1)");
  p->dropout = {drop > 0.0f, seed, dropout_threshold(drop), 1.0f / (1.0f - drop)};
  return 0;
}

}  // namespace
}  // namespace mfgf

using mfgf::AotArgs;

namespace mfgf {
namespace {

int forward_entry(const char* name, bool sequence_major, int nparam, void** params, int* ndims, int64_t** shapes,
                  const char** dtypes) {
  if (nparam != 8) return fail(name, "expected 6 inputs and 2 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  AttentionProblem problem;
  if (int status = read_problem(name, args, sequence_major, &problem)) return status;
  attention_forward(problem, args.ptr<float>(6), args.ptr<float>(7));
  return 0;
}

int backward_entry(const char* name, bool sequence_major, int nparam, void** params, int* ndims, int64_t** shapes,
                   const char** dtypes) {
  if (nparam != 13) return fail(name, "expected 10 inputs and 3 outputs, got " + std::to_string(nparam));
  const AotArgs args{nparam, params, ndims, shapes, dtypes};
  AttentionProblem problem;
  if (int status = read_problem(name, args, sequence_major, &problem)) return status;
  for (int index : {6, 8}) {
    if (args.shape(index) != args.shape(0) || !args.has_dtype(index, "float32")) {
      return fail(name, "O and dO must be float32 with the query's shape");
    }
  }
  for (int index : {7, 9}) {
    if (args.shape(index) != Shape{problem.batch, problem.heads, problem.length} ||
        !args.has_dtype(index, "float32")) {
      return fail(name, "LSE and dLSE must be float32 [batch, heads, length]");
    }
  }
  const AttentionGradients gradients{args.ptr<const float>(6), args.ptr<const float>(7), args.ptr<const float>(8),
                                     args.ptr<const float>(9)};
  attention_backward(problem, gradients, args.ptr<float>(10), args.ptr<float>(11), args.ptr<float>(12));
  return 0;
}

}  // namespace
}  // namespace mfgf

extern "C" {

// Inputs: q, k, v [B, H, L, D], mask [B, L] int32, seed int64, p float32. Outputs: O [B, H, L, D], LSE [B, H, L].
MFGF_EXPORT
int FlashAttentionForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, void*) {
  return mfgf::forward_entry("FlashAttentionForward", false, nparam, params, ndims, shapes, dtypes);
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> FlashAttentionForwardInferShape(int* ndims, int64_t** shapes, mindspore::AotExtra*) {
  const mfgf::Shape query = mfgf::shape_of(ndims, shapes, 0);
  if (mfgf::is_unknown_rank(query)) return {query, query};
  return {query, mfgf::Shape(query.begin(), query.end() - 1)};
}

// As FlashAttentionForward with q, k, v and O in [B, L, H, D]; LSE is still [B, H, L].
MFGF_EXPORT
int FlashAttentionForwardBLHD(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                              void*) {
  return mfgf::forward_entry("FlashAttentionForwardBLHD", true, nparam, params, ndims, shapes, dtypes);
}

MFGF_EXPORT
std::vector<std::vector<int64_t>> FlashAttentionForwardBLHDInferShape(int* ndims, int64_t** shapes,
                                                                      mindspore::AotExtra*) {
  const mfgf::Shape query = mfgf::shape_of(ndims, shapes, 0);
  if (mfgf::is_unknown_rank(query) || query.size() != 4) return {query, query};
  return {query, mfgf::Shape{query[0], query[2], query[1]}};
}

// Inputs: q, k, v, mask, seed, p (as forward), O, LSE, dO, dLSE. Outputs: dQ, dK, dV.
MFGF_EXPORT
int FlashAttentionBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                           void*) {
  return mfgf::backward_entry("FlashAttentionBackward", false, nparam, params, ndims, shapes, dtypes);
}

MFGF_EXPORT std::vector<std::vector<int64_t>> FlashAttentionBackwardInferShape(int* ndims, int64_t** shapes,
                                                                   mindspore::AotExtra*) {
  return {mfgf::shape_of(ndims, shapes, 0), mfgf::shape_of(ndims, shapes, 1), mfgf::shape_of(ndims, shapes, 2)};
}

MFGF_EXPORT
int FlashAttentionBackwardBLHD(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*,
                               void*) {
  return mfgf::backward_entry("FlashAttentionBackwardBLHD", true, nparam, params, ndims, shapes, dtypes);
}

MFGF_EXPORT std::vector<std::vector<int64_t>> FlashAttentionBackwardBLHDInferShape(int* ndims, int64_t** shapes,
                                                                       mindspore::AotExtra*) {
  return {mfgf::shape_of(ndims, shapes, 0), mfgf::shape_of(ndims, shapes, 1), mfgf::shape_of(ndims, shapes, 2)};
}

}  // extern "C"
