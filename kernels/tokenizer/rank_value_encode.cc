// Rank value encoding of a CSR block of cells (the tokenizer's hot loop), loaded with ctypes by
// mindformer_gf/tokenizer/native.py. The result is that of mindformer_gf/tokenizer/encode.py, bit for bit:
// value = x / n_counts * target_sum / median in float64 (true divisions, left to right, no fused operations),
// explicit zeros and columns without a token left out, order by value descending then token ascending, at most
// max_genes tokens per row.
//
// Why a radix sort: rows hold ~2,000 genes and the order must be exact on (value, token), which a comparison sort
// pays for with ~11 mispredicted branches per entry. Each value becomes a 64-bit key whose unsigned order is the
// value's descending order; two counting passes order a row by the top 2 x ~10 bits of its keys' range, which
// separates almost all distinct values, and the rare runs sharing those bits (exact ties included) are finished by
// an insertion sort on (key, token). Runs past the first max_genes entries are left unsorted. Keys are compared as
// integers, so a corrupt value (NaN) cannot break the sort; it lands somewhere and the caller refuses the block.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#define GF_EXPORT extern "C" __attribute__((visibility("default")))

// Key computation is division-bound: vector divisions round exactly as scalar ones, so wider clones only run faster.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_VECTOR_CLONES
#endif

namespace {

enum Status : int32_t {
  kOk = 0,
  kBadArgument = 1,
  kBadIndptr = 2,
  kColumnOutOfRange = 3,
  kOutputTooSmall = 4,
  kOutOfMemory = 5,
};

enum DataType : int32_t { kFloat32 = 0, kFloat64 = 1 };
enum IndexType : int32_t { kInt32 = 0, kInt64 = 1 };

struct Entry {
  uint64_t key;  // ascending key = descending value
  int32_t token;
};

inline bool entry_before(const Entry& a, const Entry& b) {
  return a.key < b.key || (a.key == b.key && a.token < b.token);
}

inline uint64_t descending_key(double value) {
  value += 0.0;  // -0.0 becomes +0.0: equal values must get equal keys
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  // IEEE order as unsigned integers: negatives get all bits flipped, positives only the sign bit
  const uint64_t ascending = (bits >> 63) ? ~bits : (bits | (uint64_t{1} << 63));
  return ~ascending;
}

inline int bit_width(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

void insertion_sort(Entry* first, Entry* last) {
  for (Entry* i = first + 1; i < last; ++i) {
    const Entry moving = *i;
    Entry* j = i;
    while (j > first && entry_before(moving, j[-1])) {
      *j = j[-1];
      --j;
    }
    *j = moving;
  }
}

void sort_exactly(Entry* first, Entry* last) {
  // long runs (many exact ties, or keys squeezed together by an outlier) would make insertion sort quadratic
  if (last - first <= 32) {
    insertion_sort(first, last);
  } else {
    std::sort(first, last, entry_before);
  }
}

struct Scratch {
  std::vector<double> values;
  std::vector<double> medians;
  std::vector<int32_t> tokens;
  std::vector<uint64_t> keys;
  std::vector<Entry> entries;
  std::vector<uint64_t> items;
  std::vector<uint64_t> other;
  std::vector<uint32_t> histogram;
};

// Normalised values -> keys, and the smallest and largest key.
GF_VECTOR_CLONES void compute_keys(const double* values, const double* medians, int64_t n, double n_count,
                                   double target_sum, uint64_t* keys, uint64_t* min_key, uint64_t* max_key) {
  uint64_t low = ~uint64_t{0}, high = 0;
  for (int64_t i = 0; i < n; ++i) {
    double value = values[i] / n_count;
    value *= target_sum;
    value /= medians[i];
    const uint64_t key = descending_key(value);
    keys[i] = key;
    low = key < low ? key : low;
    high = key > high ? key : high;
  }
  *min_key = low;
  *max_key = high;
}

// Writes the tokens of the first `keep` of the n entries (keys[i], tokens[i]) in (key, token) order to `out`.
void write_top(const uint64_t* keys, const int32_t* tokens, int64_t n, int64_t keep, uint64_t min_key,
               uint64_t max_key, Scratch& scratch, int32_t* out) {
  Entry* entries = scratch.entries.data();
  if (n <= 48) {
    for (int64_t i = 0; i < n; ++i) entries[i] = Entry{keys[i], tokens[i]};
    sort_exactly(entries, entries + n);
    for (int64_t i = 0; i < keep; ++i) out[i] = entries[i].token;
    return;
  }
  // digits of about log2(n) bits: the histograms stay as small as the row, and 2 digits tell n values apart
  const int digit_bits = std::min(std::max(bit_width(static_cast<uint64_t>(n)) - 1, 4), 11);
  const size_t radix = size_t{1} << digit_bits;
  const uint64_t low_mask = radix - 1;
  const int shift = std::max(bit_width(max_key - min_key) - 2 * digit_bits, 0);
  std::vector<uint32_t>& histogram = scratch.histogram;
  histogram.assign(2 * radix, 0);
  uint32_t* low = histogram.data();
  uint32_t* high = low + radix;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t prefix = (keys[i] - min_key) >> shift;
    ++low[prefix & low_mask];
    ++high[prefix >> digit_bits];
  }
  uint32_t low_sum = 0, high_sum = 0;
  for (size_t d = 0; d < radix; ++d) {
    const uint32_t low_count = low[d], high_count = high[d];
    low[d] = low_sum;
    high[d] = high_sum;
    low_sum += low_count;
    high_sum += high_count;
  }
  // items: the key's prefix above the entry's index; the passes move 8 bytes per entry instead of 16
  uint64_t* items = scratch.items.data();
  uint64_t* other = scratch.other.data();
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t prefix = (keys[i] - min_key) >> shift;
    other[low[prefix & low_mask]++] = (prefix << 32) | static_cast<uint64_t>(i);
  }
  for (int64_t i = 0; i < n; ++i) items[high[other[i] >> (32 + digit_bits)]++] = other[i];
  // the order is exact except inside runs of equal prefixes (exact ties included): those are sorted on (key, token)
  int64_t run_start = 0;
  for (int64_t i = 1; i <= n && run_start < keep; ++i) {
    if (i < n && (items[i] >> 32) == (items[run_start] >> 32)) continue;
    const int64_t run_end = std::min(i, keep);
    if (i - run_start == 1) {
      out[run_start] = tokens[static_cast<uint32_t>(items[run_start])];
    } else {
      for (int64_t k = run_start; k < i; ++k) {
        const uint32_t index = static_cast<uint32_t>(items[k]);
        entries[k - run_start] = Entry{keys[index], tokens[index]};
      }
      sort_exactly(entries, entries + (i - run_start));
      for (int64_t k = run_start; k < run_end; ++k) out[k] = entries[k - run_start].token;
    }
    run_start = i;
  }
}

template <typename Value, typename Index>
int32_t encode_rows(const Value* data, const Index* indices, const int64_t* indptr, int64_t n_rows, int64_t nnz,
                    const int32_t* column_tokens, const double* column_medians, int64_t n_columns,
                    const double* n_counts, double target_sum, int64_t max_genes, int32_t cls_token,
                    int32_t eos_token, int32_t* out_tokens, int64_t out_capacity, int64_t* out_offsets,
                    int64_t* out_expressed, int64_t* out_counts) {
  if (indptr[0] != 0) return kBadIndptr;
  int64_t longest = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    if (indptr[r + 1] < indptr[r] || indptr[r + 1] > nnz) return kBadIndptr;
    longest = std::max(longest, indptr[r + 1] - indptr[r]);
  }
  Scratch scratch;
  // one spare element: the selection loop writes one past the last entry it keeps
  const size_t size = static_cast<size_t>(longest) + 1;
  scratch.values.resize(size);
  scratch.medians.resize(size);
  scratch.tokens.resize(size);
  scratch.keys.resize(size);
  scratch.entries.resize(size);
  scratch.items.resize(size);
  scratch.other.resize(size);
  const bool specials = cls_token >= 0 && eos_token >= 0;
  int64_t negatives = 0, non_integers = 0, non_finite = 0;
  int64_t written = 0;
  out_offsets[0] = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    double* values = scratch.values.data();
    double* medians = scratch.medians.data();
    int32_t* tokens = scratch.tokens.data();
    int64_t n = 0;
    for (int64_t j = indptr[r]; j < indptr[r + 1]; ++j) {
      const double x = static_cast<double>(data[j]);
      negatives += x < 0;
      // numpy's `data != rint(data)`, NaN included, without a libm call: |x| >= 2**52 is always whole
      non_integers += std::fabs(x) < 0x1p52 ? static_cast<double>(static_cast<int64_t>(x)) != x : std::isnan(x);
      const int64_t column = static_cast<int64_t>(indices[j]);
      if (column < 0 || column >= n_columns) return kColumnOutOfRange;
      const int32_t token = column_tokens[column];
      // stored whether kept or not, so that there is no branch on the data; only kept ones advance n
      const bool keep_entry = token >= 0 && x != 0;
      values[n] = x;
      medians[n] = column_medians[column];
      tokens[n] = token;
      non_finite += keep_entry && !std::isfinite(x);
      n += keep_entry;
    }
    out_expressed[r] = n;
    const int64_t keep = std::min(n, max_genes);
    const int64_t row_size = n == 0 ? 0 : keep + (specials ? 2 : 0);
    if (row_size > out_capacity - written) return kOutputTooSmall;
    if (n > 0) {
      uint64_t min_key = 0, max_key = 0;
      uint64_t* keys = scratch.keys.data();
      compute_keys(values, medians, n, n_counts[r], target_sum, keys, &min_key, &max_key);
      int32_t* out = out_tokens + written;
      if (specials) *out++ = cls_token;
      write_top(keys, tokens, n, keep, min_key, max_key, scratch, out);
      if (specials) out[keep] = eos_token;
    }
    written += row_size;
    out_offsets[r + 1] = written;
  }
  out_counts[0] = negatives;
  out_counts[1] = non_integers;
  out_counts[2] = non_finite;
  return kOk;
}

}  // namespace

// Rank value encodes CSR rows. Inputs: data (float32 or float64, `data_type`), indices (int32 or int64,
// `index_type`), indptr (int64, n_rows + 1) of a block with n_columns columns; column_tokens (int32) and
// column_medians (float64), n_columns each: the token and gene median of each column, a negative token for columns
// left out; n_counts (float64, n_rows); max_genes >= 0; cls_token and eos_token (both >= 0: every non-empty row is
// framed by them). Outputs: out_tokens (int32, out_capacity entries), out_offsets (int64, n_rows + 1: row r is
// out_tokens[out_offsets[r]:out_offsets[r + 1]]; rows without a kept gene are empty, without special tokens),
// out_expressed (int64, n_rows: kept genes before truncation) and out_counts (int64, 3: negative values and
// non-integer values among all values, non-finite values among the kept ones). Returns 0, or a Status.
GF_EXPORT int32_t gf_rank_value_encode(const void* data, int32_t data_type, const void* indices, int32_t index_type,
                                       const int64_t* indptr, int64_t n_rows, int64_t nnz,
                                       const int32_t* column_tokens, const double* column_medians, int64_t n_columns,
                                       const double* n_counts, double target_sum, int64_t max_genes,
                                       int32_t cls_token, int32_t eos_token, int32_t* out_tokens,
                                       int64_t out_capacity, int64_t* out_offsets, int64_t* out_expressed,
                                       int64_t* out_counts) {
  if (n_rows < 0 || nnz < 0 || n_columns < 0 || max_genes < 0 || out_capacity < 0) return kBadArgument;
  if (!indptr || !out_offsets || !out_expressed || !out_counts || (n_rows > 0 && !n_counts)) return kBadArgument;
  if (nnz > 0 && (!data || !indices)) return kBadArgument;
  if (n_columns > 0 && (!column_tokens || !column_medians)) return kBadArgument;
  if (out_capacity > 0 && !out_tokens) return kBadArgument;
  // radix sort positions are 32-bit
  if (nnz > int64_t{0xFFFFFFFF}) return kBadArgument;
#define GF_ENCODE(Value, Index)                                                                                      \
  encode_rows(static_cast<const Value*>(data), static_cast<const Index*>(indices), indptr, n_rows, nnz,             \
              column_tokens, column_medians, n_columns, n_counts, target_sum, max_genes, cls_token, eos_token,       \
              out_tokens, out_capacity, out_offsets, out_expressed, out_counts)
  try {
    if (data_type == kFloat32 && index_type == kInt32) return GF_ENCODE(float, int32_t);
    if (data_type == kFloat32 && index_type == kInt64) return GF_ENCODE(float, int64_t);
    if (data_type == kFloat64 && index_type == kInt32) return GF_ENCODE(double, int32_t);
    if (data_type == kFloat64 && index_type == kInt64) return GF_ENCODE(double, int64_t);
  } catch (const std::bad_alloc&) {
    return kOutOfMemory;
  }
#undef GF_ENCODE
  return kBadArgument;
}

// Version of this C interface: native.py refuses a library built from another one (a stale build).
GF_EXPORT int32_t gf_rank_value_encode_abi() { return 2; }
