// The AVX-512 tile kernels' algorithm (tile_kernels_lane16.h) on AVX2: each 16-lane vector is a pair of ymm
// registers, each predicate a pair of lane masks.
//
// This table exists so the AVX-512 code's algorithm (16-lane tiles and panels, tail predicates, the 16-lane
// reduction tree, the dropout hash over 16 lanes) runs and is tested on hosts without AVX-512. Every operation below
// is the lane-wise equivalent of the __m512 operation of tile_kernels_avx512.cc, so the two tables return the same
// bits (tile_kernels_lane16.h says why). It is selected only on request ("avx512emu": MINDFORMER_GF_CPU_ISA or
// fused.set_cpu_isa), never by "auto": the AVX2 table is faster on the same CPU.
#include "tile_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MFGF_LANE16_TARGET __attribute__((target("avx2,fma"), always_inline)) inline
#define MFGF_LANE16_FUNCTION __attribute__((target("avx2,fma")))

namespace mfgf {
namespace {

struct YmmPairLanes {
  struct F {
    __m256 lo, hi;
  };
  struct I {
    __m256i lo, hi;
  };
  // All-ones 32-bit lanes where the predicate holds.
  struct M {
    __m256i lo, hi;
  };

  MFGF_LANE16_TARGET static F zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  MFGF_LANE16_TARGET static F set1(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
  MFGF_LANE16_TARGET static F load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  MFGF_LANE16_TARGET static void store(float* p, F v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
  }
  MFGF_LANE16_TARGET static __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  MFGF_LANE16_TARGET static M mask_first(int n) {
    const int clamped = n < 0 ? 0 : n > 16 ? 16 : n;
    return {lanes_below(clamped), lanes_below(clamped - 8)};
  }
  // vmaskmovps: masked-off lanes read as 0 and are never accessed, as with a zmm masked load.
  MFGF_LANE16_TARGET static F load_masked(const float* p, M m) {
    return {_mm256_maskload_ps(p, m.lo), _mm256_maskload_ps(p + 8, m.hi)};
  }
  MFGF_LANE16_TARGET static F load_masked_fill(const float* p, M m, F fill) {
    const F loaded = load_masked(p, m);
    return {_mm256_blendv_ps(fill.lo, loaded.lo, _mm256_castsi256_ps(m.lo)),
            _mm256_blendv_ps(fill.hi, loaded.hi, _mm256_castsi256_ps(m.hi))};
  }
  MFGF_LANE16_TARGET static void store_masked(float* p, M m, F v) {
    _mm256_maskstore_ps(p, m.lo, v.lo);
    _mm256_maskstore_ps(p + 8, m.hi, v.hi);
  }
  MFGF_LANE16_TARGET static F add(F a, F b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static F sub(F a, F b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static F mul(F a, F b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static F max(F a, F b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static F min(F a, F b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static F fmadd(F a, F b, F c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  MFGF_LANE16_TARGET static F fnmadd(F a, F b, F c) {
    return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
  }
  MFGF_LANE16_TARGET static F fmsub(F a, F b, F c) {
    return {_mm256_fmsub_ps(a.lo, b.lo, c.lo), _mm256_fmsub_ps(a.hi, b.hi, c.hi)};
  }
  MFGF_LANE16_TARGET static F exponent_from_low_bits(F t) {
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t.lo), 23)),
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t.hi), 23))};
  }
  MFGF_LANE16_TARGET static F zero_where(M m, F v) {
    return {_mm256_andnot_ps(_mm256_castsi256_ps(m.lo), v.lo), _mm256_andnot_ps(_mm256_castsi256_ps(m.hi), v.hi)};
  }
  MFGF_LANE16_TARGET static F keep_where(M m, F v) {
    return {_mm256_and_ps(_mm256_castsi256_ps(m.lo), v.lo), _mm256_and_ps(_mm256_castsi256_ps(m.hi), v.hi)};
  }

  MFGF_LANE16_TARGET static I set1_i(uint32_t v) {
    return {_mm256_set1_epi32(static_cast<int>(v)), _mm256_set1_epi32(static_cast<int>(v))};
  }
  MFGF_LANE16_TARGET static I iota_i() {
    return {_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)};
  }
  MFGF_LANE16_TARGET static I add_i(I a, I b) { return {_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)}; }
  MFGF_LANE16_TARGET static I xor_i(I a, I b) { return {_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)}; }
  template <int Shift>
  MFGF_LANE16_TARGET static I srli_i(I v) {
    return {_mm256_srli_epi32(v.lo, Shift), _mm256_srli_epi32(v.hi, Shift)};
  }
  MFGF_LANE16_TARGET static I mullo_i(I a, I b) {
    return {_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi)};
  }
  MFGF_LANE16_TARGET static I load_i(const uint32_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))};
  }
  MFGF_LANE16_TARGET static I load_masked_i(const uint32_t* p, M m) {
    const int* in = reinterpret_cast<const int*>(p);
    return {_mm256_maskload_epi32(in, m.lo), _mm256_maskload_epi32(in + 8, m.hi)};
  }
  MFGF_LANE16_TARGET static void store_i(uint32_t* p, I v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v.lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 8), v.hi);
  }
  MFGF_LANE16_TARGET static void store_masked_i(uint32_t* p, M m, I v) {
    int* out = reinterpret_cast<int*>(p);
    _mm256_maskstore_epi32(out, m.lo, v.lo);
    _mm256_maskstore_epi32(out + 8, m.hi, v.hi);
  }
  MFGF_LANE16_TARGET static M gt_i(I a, I b) { return {_mm256_cmpgt_epi32(a.lo, b.lo), _mm256_cmpgt_epi32(a.hi, b.hi)}; }

  // The zmm reduction tree (tile_kernels_avx512.cc): hi onto lo, then the 8 -> 1 tree.
  MFGF_LANE16_TARGET static float reduce_add(F v) {
    const __m256 eight = _mm256_add_ps(v.lo, v.hi);
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
  }
  MFGF_LANE16_TARGET static float reduce_max(F v) {
    const __m256 eight = _mm256_max_ps(v.lo, v.hi);
    __m128 best = _mm_max_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    best = _mm_max_ps(best, _mm_movehl_ps(best, best));
    best = _mm_max_ss(best, _mm_movehdup_ps(best));
    return _mm_cvtss_f32(best);
  }
};

}  // namespace
}  // namespace mfgf

#undef MFGF_LANE16_TARGET
#define MFGF_LANE16_TARGET MFGF_LANE16_FUNCTION
#include "tile_kernels_lane16.h"

namespace mfgf {

const TileKernels* avx512_emulated_tile_kernels() {
  static const TileKernels table = with_avx2_gelu(Lane16Kernels<YmmPairLanes>::table("avx512emu"));
  return &table;
}

}  // namespace mfgf

#else

namespace mfgf {
const TileKernels* avx512_emulated_tile_kernels() { return nullptr; }
}  // namespace mfgf

#endif
