// A scalar functional model of the AVX-512F intrinsics (and the few AVX/SSE ones) that the zmm shim of
// kernels/cpu/tile_kernels_avx512.cc uses, shadowing <immintrin.h> so that file compiles unchanged and runs, lane by
// lane, on a host without AVX-512 (tests/ops/test_avx512_model.py).
//
// Written from Intel's documented semantics only: the operation sections of the Intel 64 and IA-32 Architectures
// Software Developer's Manual (SDM), vol. 2, cited per instruction through its HTML rendering at
// https://www.felixcloutier.com/x86/<instruction>, and the intrinsic signatures and descriptions of the Intel
// Intrinsics Guide (https://www.intel.com/content/www/us/en/docs/intrinsics-guide/, quoted verbatim in Rust's
// core::arch documentation, e.g. https://doc.rust-lang.org/core/arch/x86_64/fn._mm512_mask_loadu_ps.html). No
// compiler header was read or copied. Conventions, all from those sources:
//   - lane i of a vector is element i (bits 32i+31:32i); bit i of a __mmask16 governs lane i;
//   - arithmetic is IEEE 754 binary32 with one rounding per operation, round-to-nearest-even (MXCSR's default,
//     which the model assumes and the library never changes); FMA forms round once (std::fma);
//   - masked loads read only the enabled lanes' memory (the SDM: "faults are suppressed on masked-off elements"), so
//     a kernel that relied on reading past the end of a buffer faults here as it would not on hardware, and the
//     guard-page test of test_avx512_model.py can tell.
// Every arithmetic result lane goes through `settle`, an empty asm statement the compiler cannot see through, so the
// compiler cannot contract a modelled multiply and a modelled add into one fused operation: each intrinsic rounds
// exactly once, as the instruction does, however the calls are combined and inlined.
#pragma once

#if defined(__AVX512F__)
#error "the AVX-512 model must be compiled without -mavx512f: it stands in for the real intrinsics"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#define MFGF_AVX512_MODEL 1

// Vector types: plain arrays of lanes (bit casts between them copy the bytes, as a register reinterpretation does).
struct __m512 {
  float f[16];
};
struct __m512i {
  uint32_t u[16];
};
struct __m512d {
  double d[8];
};
struct __m256 {
  float f[8];
};
struct __m256d {
  double d[4];
};
struct __m128 {
  float f[4];
};
using __mmask16 = uint16_t;

namespace mfgf_avx512_model {

inline float settle(float v) {
  __asm__("" : "+x"(v));
  return v;
}

inline bool lane_on(__mmask16 k, int i) { return ((k >> i) & 1u) != 0; }

template <class To, class From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit casts keep the register width");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// SDM MAXPS/MINPS, operation MAX(SRC1, SRC2) / MIN(SRC1, SRC2): SRC1 when SRC1 > SRC2 (resp. <), otherwise SRC2 —
// so SRC2 when either is NaN and when both are zeros of either sign.
inline float max_op(float a, float b) { return a > b ? a : b; }
inline float min_op(float a, float b) { return a < b ? a : b; }

}  // namespace mfgf_avx512_model

// ------------------------------------------------------------------------------------------ AVX-512F: set, move

// _mm512_setzero_ps: "Return vector of type __m512 with all elements set to zero." (VXORPS zmm)
inline __m512 _mm512_setzero_ps() {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = 0.0f;
  return r;
}

// _mm512_set1_ps: "Broadcast single-precision (32-bit) floating-point value a to all elements of dst." (VBROADCASTSS)
inline __m512 _mm512_set1_ps(float a) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = a;
  return r;
}

// _mm512_set1_epi32: "Broadcast 32-bit integer a to all elements of dst." (VPBROADCASTD)
inline __m512i _mm512_set1_epi32(int a) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = static_cast<uint32_t>(a);
  return r;
}

// _mm512_setr_epi32: "Set packed 32-bit integers in dst with the supplied values in reverse order": the first
// argument goes to element 0.
inline __m512i _mm512_setr_epi32(int e0, int e1, int e2, int e3, int e4, int e5, int e6, int e7, int e8, int e9,
                                 int e10, int e11, int e12, int e13, int e14, int e15) {
  const int e[16] = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = static_cast<uint32_t>(e[i]);
  return r;
}

// _mm512_maskz_mov_ps(k, a): "Move packed single-precision (32-bit) floating-point elements from a into dst using
// zeromask k (elements are zeroed out when the corresponding mask bit is not set)." (SDM VMOVAPS, EVEX {z})
inline __m512 _mm512_maskz_mov_ps(__mmask16 k, __m512 a) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::lane_on(k, i) ? a.f[i] : 0.0f;
  return r;
}

// ----------------------------------------------------------------------------------------- AVX-512F: memory

// _mm512_loadu_ps(mem_addr): "Load 512-bits (composed of 16 packed single-precision (32-bit) floating-point
// elements) from memory into dst. mem_addr does not need to be aligned on any particular boundary." (VMOVUPS)
inline __m512 _mm512_loadu_ps(void const* mem_addr) {
  __m512 r;
  std::memcpy(r.f, mem_addr, sizeof(r.f));
  return r;
}

// _mm512_storeu_ps(mem_addr, a): "Store 512-bits (composed of 16 packed single-precision (32-bit) floating-point
// elements) from a into memory." (VMOVUPS)
inline void _mm512_storeu_ps(void* mem_addr, __m512 a) { std::memcpy(mem_addr, a.f, sizeof(a.f)); }

// _mm512_maskz_loadu_ps(k, mem_addr): "Load packed single-precision (32-bit) floating-point elements from memory into
// dst using zeromask k (elements are zeroed out when the corresponding mask bit is not set)." SDM VMOVUPS: memory of
// masked-off elements is not accessed (faults suppressed); only enabled lanes are read here.
inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, void const* mem_addr) {
  const float* p = static_cast<const float*>(mem_addr);
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::lane_on(k, i) ? p[i] : 0.0f;
  return r;
}

// _mm512_mask_loadu_ps(src, k, mem_addr): "Load packed single-precision (32-bit) floating-point elements from memory
// into dst using writemask k (elements are copied from src when the corresponding mask bit is not set)."
inline __m512 _mm512_mask_loadu_ps(__m512 src, __mmask16 k, void const* mem_addr) {
  const float* p = static_cast<const float*>(mem_addr);
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::lane_on(k, i) ? p[i] : src.f[i];
  return r;
}

// _mm512_mask_storeu_ps(mem_addr, k, a): "Store packed single-precision (32-bit) floating-point elements from a into
// memory using writemask k." SDM VMOVUPS: masked-off elements of memory are left unchanged (not written).
inline void _mm512_mask_storeu_ps(void* mem_addr, __mmask16 k, __m512 a) {
  float* p = static_cast<float*>(mem_addr);
  for (int i = 0; i < 16; ++i)
    if (mfgf_avx512_model::lane_on(k, i)) p[i] = a.f[i];
}

// _mm512_loadu_si512(mem_addr): "Load 512-bits of integer data from memory into dst." (VMOVDQU32)
inline __m512i _mm512_loadu_si512(void const* mem_addr) {
  __m512i r;
  std::memcpy(r.u, mem_addr, sizeof(r.u));
  return r;
}

// _mm512_storeu_si512(mem_addr, a): "Store 512-bits of integer data from a into memory." (VMOVDQU32)
inline void _mm512_storeu_si512(void* mem_addr, __m512i a) { std::memcpy(mem_addr, a.u, sizeof(a.u)); }

// _mm512_maskz_loadu_epi32(k, mem_addr): "Load packed 32-bit integers from memory into dst using zeromask k
// (elements are zeroed out when the corresponding mask bit is not set)." (VMOVDQU32; masked-off memory not read)
inline __m512i _mm512_maskz_loadu_epi32(__mmask16 k, void const* mem_addr) {
  const uint32_t* p = static_cast<const uint32_t*>(mem_addr);
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = mfgf_avx512_model::lane_on(k, i) ? p[i] : 0u;
  return r;
}

// _mm512_mask_storeu_epi32(mem_addr, k, a): "Store packed 32-bit integers from a into memory using writemask k."
inline void _mm512_mask_storeu_epi32(void* mem_addr, __mmask16 k, __m512i a) {
  uint32_t* p = static_cast<uint32_t*>(mem_addr);
  for (int i = 0; i < 16; ++i)
    if (mfgf_avx512_model::lane_on(k, i)) p[i] = a.u[i];
}

// ------------------------------------------------------------------------------------- AVX-512F: float arithmetic

// _mm512_add_ps / _sub_ps / _mul_ps: "Add (Subtract b from, Multiply) packed single-precision (32-bit) floating-point
// elements in a and b": dst[i] = a[i] op b[i], one IEEE rounding (SDM ADDPS, SUBPS, MULPS).
inline __m512 _mm512_add_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(a.f[i] + b.f[i]);
  return r;
}
inline __m512 _mm512_sub_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(a.f[i] - b.f[i]);
  return r;
}
inline __m512 _mm512_mul_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(a.f[i] * b.f[i]);
  return r;
}

// _mm512_max_ps / _min_ps: SDM MAXPS / MINPS, MAX(a[i], b[i]) / MIN(a[i], b[i]) (see max_op).
inline __m512 _mm512_max_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::max_op(a.f[i], b.f[i]);
  return r;
}
inline __m512 _mm512_min_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::min_op(a.f[i], b.f[i]);
  return r;
}

// _mm512_fmadd_ps(a, b, c): "Multiply packed single-precision (32-bit) floating-point elements in a and b, add the
// intermediate result to packed elements in c": dst = a*b + c, one rounding (SDM VFMADD132PS/213PS/231PS).
inline __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(std::fma(a.f[i], b.f[i], c.f[i]));
  return r;
}

// _mm512_fnmadd_ps(a, b, c): "... add the negated intermediate result to packed elements in c": dst = -(a*b) + c,
// one rounding (SDM VFNMADD132PS...): fma(-a, b, c) is that exactly (negation is exact).
inline __m512 _mm512_fnmadd_ps(__m512 a, __m512 b, __m512 c) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(std::fma(-a.f[i], b.f[i], c.f[i]));
  return r;
}

// _mm512_fmsub_ps(a, b, c): "... subtract packed elements in c from the intermediate result": dst = a*b - c, one
// rounding (SDM VFMSUB132PS...).
inline __m512 _mm512_fmsub_ps(__m512 a, __m512 b, __m512 c) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = mfgf_avx512_model::settle(std::fma(a.f[i], b.f[i], -c.f[i]));
  return r;
}

// --------------------------------------------------------------------------------------- AVX-512F: integers

// _mm512_add_epi32: "Add packed 32-bit integers in a and b": modulo 2^32 (SDM VPADDD).
inline __m512i _mm512_add_epi32(__m512i a, __m512i b) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = a.u[i] + b.u[i];
  return r;
}

// _mm512_mullo_epi32: "Multiply the packed 32-bit integers in a and b, producing intermediate 64-bit integers, and
// store the low 32 bits of the intermediate integers in dst" (SDM VPMULLD): the product modulo 2^32.
inline __m512i _mm512_mullo_epi32(__m512i a, __m512i b) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = static_cast<uint32_t>(uint64_t{a.u[i]} * uint64_t{b.u[i]});
  return r;
}

// _mm512_xor_si512: "Compute the bitwise XOR of 512 bits (representing integer data) in a and b" (VPXORD).
inline __m512i _mm512_xor_si512(__m512i a, __m512i b) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = a.u[i] ^ b.u[i];
  return r;
}

// _mm512_slli_epi32(a, imm8) / _mm512_srli_epi32(a, imm8): "Shift packed 32-bit integers in a left (right) by imm8
// while shifting in zeros": counts above 31 give 0 (SDM VPSLLD / VPSRLD, logical shifts).
inline __m512i _mm512_slli_epi32(__m512i a, unsigned int imm8) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = (imm8 & 0xFF) > 31 ? 0u : a.u[i] << (imm8 & 0xFF);
  return r;
}
inline __m512i _mm512_srli_epi32(__m512i a, unsigned int imm8) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = (imm8 & 0xFF) > 31 ? 0u : a.u[i] >> (imm8 & 0xFF);
  return r;
}

// _mm512_cmpgt_epi32_mask(a, b): "Compare packed signed 32-bit integers in a and b for greater-than, and store the
// results in mask vector k" (SDM VPCMPGTD / VPCMPD, signed).
inline __mmask16 _mm512_cmpgt_epi32_mask(__m512i a, __m512i b) {
  unsigned k = 0;
  for (int i = 0; i < 16; ++i)
    k |= static_cast<unsigned>(static_cast<int32_t>(a.u[i]) > static_cast<int32_t>(b.u[i])) << i;
  return static_cast<__mmask16>(k);
}

// ----------------------------------------------------------------------------------- AVX-512F: casts, extracts

// _mm512_castsi512_ps / _mm512_castps_si512 / _mm512_castps_pd: "Cast vector of type __m512i to type __m512 (__m512
// to __m512i, __m512d). This intrinsic is only used for compilation and does not generate any instructions": the
// same 512 bits.
inline __m512 _mm512_castsi512_ps(__m512i a) { return mfgf_avx512_model::bit_cast<__m512>(a); }
inline __m512i _mm512_castps_si512(__m512 a) { return mfgf_avx512_model::bit_cast<__m512i>(a); }
inline __m512d _mm512_castps_pd(__m512 a) { return mfgf_avx512_model::bit_cast<__m512d>(a); }

// _mm512_castps512_ps256: "Cast vector of type __m512 to type __m256" : the lower 256 bits, elements 0..7.
inline __m256 _mm512_castps512_ps256(__m512 a) {
  __m256 r;
  for (int i = 0; i < 8; ++i) r.f[i] = a.f[i];
  return r;
}

// _mm512_extractf64x4_pd(a, imm8): "Extract 256 bits (composed of 4 packed double-precision (64-bit) floating-point
// elements) from a, selected with imm8": imm8[0] = 0 the lower half (elements 0..3), 1 the upper (4..7)
// (SDM VEXTRACTF64x4).
inline __m256d _mm512_extractf64x4_pd(__m512d a, int imm8) {
  __m256d r;
  const int base = (imm8 & 1) ? 4 : 0;
  for (int i = 0; i < 4; ++i) r.d[i] = a.d[base + i];
  return r;
}

// ------------------------------------------------------------------------------------ AVX (256-bit) and SSE

// _mm256_castpd_ps: "Cast vector of type __m256d to type __m256": the same 256 bits.
inline __m256 _mm256_castpd_ps(__m256d a) { return mfgf_avx512_model::bit_cast<__m256>(a); }

// _mm256_castps256_ps128: "Cast vector of type __m256 to type __m128": the lower 128 bits, elements 0..3.
inline __m128 _mm256_castps256_ps128(__m256 a) {
  __m128 r;
  for (int i = 0; i < 4; ++i) r.f[i] = a.f[i];
  return r;
}

// _mm256_extractf128_ps(a, imm8): "Extract 128 bits (composed of 4 packed single-precision (32-bit) floating-point
// elements) from a, selected with imm8": imm8[0] = 1 the upper half, elements 4..7 (SDM VEXTRACTF128).
inline __m128 _mm256_extractf128_ps(__m256 a, int imm8) {
  __m128 r;
  const int base = (imm8 & 1) ? 4 : 0;
  for (int i = 0; i < 4; ++i) r.f[i] = a.f[base + i];
  return r;
}

// _mm256_add_ps / _mm256_max_ps: lane-wise as the 512-bit forms (SDM VADDPS, VMAXPS).
inline __m256 _mm256_add_ps(__m256 a, __m256 b) {
  __m256 r;
  for (int i = 0; i < 8; ++i) r.f[i] = mfgf_avx512_model::settle(a.f[i] + b.f[i]);
  return r;
}
inline __m256 _mm256_max_ps(__m256 a, __m256 b) {
  __m256 r;
  for (int i = 0; i < 8; ++i) r.f[i] = mfgf_avx512_model::max_op(a.f[i], b.f[i]);
  return r;
}

// _mm_add_ps / _mm_max_ps: lane-wise on 4 elements (SDM ADDPS, MAXPS).
inline __m128 _mm_add_ps(__m128 a, __m128 b) {
  __m128 r;
  for (int i = 0; i < 4; ++i) r.f[i] = mfgf_avx512_model::settle(a.f[i] + b.f[i]);
  return r;
}
inline __m128 _mm_max_ps(__m128 a, __m128 b) {
  __m128 r;
  for (int i = 0; i < 4; ++i) r.f[i] = mfgf_avx512_model::max_op(a.f[i], b.f[i]);
  return r;
}

// _mm_add_ss / _mm_max_ss: "... the lower single-precision (32-bit) floating-point element in a and b, store the
// result in the lower element of dst, and copy the upper 3 packed elements from a to the upper elements of dst"
// (SDM ADDSS, MAXSS).
inline __m128 _mm_add_ss(__m128 a, __m128 b) {
  __m128 r = a;
  r.f[0] = mfgf_avx512_model::settle(a.f[0] + b.f[0]);
  return r;
}
inline __m128 _mm_max_ss(__m128 a, __m128 b) {
  __m128 r = a;
  r.f[0] = mfgf_avx512_model::max_op(a.f[0], b.f[0]);
  return r;
}

// _mm_movehl_ps(a, b): "Move the upper 2 single-precision (32-bit) floating-point elements from b to the lower 2
// elements of dst, and copy the upper 2 elements from a to the upper 2 elements of dst" (SDM MOVHLPS).
inline __m128 _mm_movehl_ps(__m128 a, __m128 b) {
  __m128 r;
  r.f[0] = b.f[2];
  r.f[1] = b.f[3];
  r.f[2] = a.f[2];
  r.f[3] = a.f[3];
  return r;
}

// _mm_movehdup_ps(a): "Duplicate odd-indexed single-precision (32-bit) floating-point elements from a":
// dst = {a1, a1, a3, a3} (SDM MOVSHDUP).
inline __m128 _mm_movehdup_ps(__m128 a) {
  __m128 r;
  r.f[0] = r.f[1] = a.f[1];
  r.f[2] = r.f[3] = a.f[3];
  return r;
}

// _mm_cvtss_f32(a): "Copy the lower single-precision (32-bit) floating-point element of a to dst" (MOVSS).
inline float _mm_cvtss_f32(__m128 a) { return a.f[0]; }
