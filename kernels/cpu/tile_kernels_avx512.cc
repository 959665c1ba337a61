// AVX-512 versions of the tile kernels: the 16-lane algorithm (tile_kernels_lane16.h) on zmm registers.
//
// As in tile_kernels_avx2.cc, every function carries a target attribute instead of the file being compiled with
// -mavx512f, so the library still loads on any x86-64; isa_dispatch.cc picks this table only when the CPU (and the
// OS, which must save the zmm state) reports AVX-512F. Only AVX-512F instructions are used (no DQ/BW/VL), so every
// AVX-512 CPU since Knights Landing and Skylake-SP runs it. tile_kernels_avx512_emulated.cc instantiates the same
// algorithm on pairs of ymm registers, which is how it is tested on hosts without AVX-512.
#include "tile_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// GCC 12's avx512fintrin.h initialises its "undefined" vectors from themselves (GCC bug 105593, fixed in 13), which
// -Wuninitialized reports at every masked or extracting intrinsic once inlined here.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Overridable only so tests/ops/avx512_model can compile this file, shim included, against a scalar model of the
// intrinsics on a host without AVX-512 (it defines both without target attributes).
#ifndef MFGF_LANE16_TARGET
#define MFGF_LANE16_TARGET __attribute__((target("avx512f,avx2,fma"), always_inline)) inline
#endif
#ifndef MFGF_LANE16_FUNCTION
#define MFGF_LANE16_FUNCTION __attribute__((target("avx512f,avx2,fma")))
#endif

namespace mfgf {
namespace {

// 16 lanes in one zmm register; predicates in a mask register.
struct Avx512Lanes {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  MFGF_LANE16_TARGET static F zero() { return _mm512_setzero_ps(); }
  MFGF_LANE16_TARGET static F set1(float v) { return _mm512_set1_ps(v); }
  MFGF_LANE16_TARGET static F load(const float* p) { return _mm512_loadu_ps(p); }
  MFGF_LANE16_TARGET static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  MFGF_LANE16_TARGET static M mask_first(int n) {
    return n >= 16 ? static_cast<M>(0xFFFF) : n <= 0 ? static_cast<M>(0) : static_cast<M>((1u << n) - 1u);
  }
  MFGF_LANE16_TARGET static F load_masked(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  MFGF_LANE16_TARGET static F load_masked_fill(const float* p, M m, F fill) { return _mm512_mask_loadu_ps(fill, m, p); }
  MFGF_LANE16_TARGET static void store_masked(float* p, M m, F v) { _mm512_mask_storeu_ps(p, m, v); }
  MFGF_LANE16_TARGET static F add(F a, F b) { return _mm512_add_ps(a, b); }
  MFGF_LANE16_TARGET static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  MFGF_LANE16_TARGET static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  MFGF_LANE16_TARGET static F max(F a, F b) { return _mm512_max_ps(a, b); }
  MFGF_LANE16_TARGET static F min(F a, F b) { return _mm512_min_ps(a, b); }
  MFGF_LANE16_TARGET static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  MFGF_LANE16_TARGET static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  MFGF_LANE16_TARGET static F fmsub(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }
  // The float 2^(low 9 bits of t's pattern - 127): t's bit pattern shifted into the exponent field.
  MFGF_LANE16_TARGET static F exponent_from_low_bits(F t) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23));
  }
  MFGF_LANE16_TARGET static F zero_where(M m, F v) { return _mm512_maskz_mov_ps(static_cast<M>(~m), v); }
  MFGF_LANE16_TARGET static F keep_where(M m, F v) { return _mm512_maskz_mov_ps(m, v); }

  MFGF_LANE16_TARGET static I set1_i(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  MFGF_LANE16_TARGET static I iota_i() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  MFGF_LANE16_TARGET static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  MFGF_LANE16_TARGET static I xor_i(I a, I b) { return _mm512_xor_si512(a, b); }
  template <int Shift>
  MFGF_LANE16_TARGET static I srli_i(I v) {
    return _mm512_srli_epi32(v, Shift);
  }
  MFGF_LANE16_TARGET static I mullo_i(I a, I b) { return _mm512_mullo_epi32(a, b); }
  MFGF_LANE16_TARGET static I load_i(const uint32_t* p) { return _mm512_loadu_si512(p); }
  MFGF_LANE16_TARGET static I load_masked_i(const uint32_t* p, M m) { return _mm512_maskz_loadu_epi32(m, p); }
  MFGF_LANE16_TARGET static void store_i(uint32_t* p, I v) { _mm512_storeu_si512(p, v); }
  MFGF_LANE16_TARGET static void store_masked_i(uint32_t* p, M m, I v) { _mm512_mask_storeu_epi32(p, m, v); }
  MFGF_LANE16_TARGET static M gt_i(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }

  // The reduction tree shared with the emulation: upper 8 lanes onto the lower 8, then AVX2's 8 -> 1 tree.
  MFGF_LANE16_TARGET static __m256 upper_half(F v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  }
  MFGF_LANE16_TARGET static float reduce_add(F v) {
    const __m256 eight = _mm256_add_ps(_mm512_castps512_ps256(v), upper_half(v));
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
  }
  MFGF_LANE16_TARGET static float reduce_max(F v) {
    const __m256 eight = _mm256_max_ps(_mm512_castps512_ps256(v), upper_half(v));
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

const TileKernels* avx512_tile_kernels() {
  static const TileKernels table = with_avx2_gelu(Lane16Kernels<Avx512Lanes>::table("avx512"));
  return &table;
}

}  // namespace mfgf

#else

namespace mfgf {
const TileKernels* avx512_tile_kernels() { return nullptr; }
}  // namespace mfgf

#endif
