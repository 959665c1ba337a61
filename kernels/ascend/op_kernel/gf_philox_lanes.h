// The attention-dropout keep mask on the vector unit: Philox4x32-10 word 0 (gf_philox.h, the CPU kernels and
// mindformer_gf/reference/attention_dropout.py define it) for many counters at once, written with only the 32-bit
// integer operations the A2 (910B) vector unit has:
//   add, subtract and multiply by a scalar keeping the low 32 bits (int32 Add / Sub / Muls),
//   logical shifts (uint32 ShiftLeft / ShiftRight),
//   bitwise And / Or (16-bit instructions; applied to both halves of a 32-bit lane they are the 32-bit ones),
//   and for the keep decision, int32 -> fp32 conversion and fp32 Adds / Muls / Add / Maxs / Mins.
// There is no 32 x 32 -> 64-bit multiply (nor a high-half one) and no Xor, so:
//   mulhi(a, M) from 16-bit halves: a = aH 2^16 + aL, M = MH 2^16 + ML (all partial products < 2^32),
//     hi = aH MH + (aL MH >> 16) + (aH ML >> 16) + (((aL ML >> 16) + low16(aL MH) + low16(aH ML)) >> 16);
//   a ^ b = (a | b) - (a & b)  (the Or counts every bit set in either, the And the ones set in both);
//   word >= threshold (unsigned; int32 compares only for equality here) from the sign of the exact integer
//     d = (wordH - thresholdH) 2^16 + (wordL - thresholdL) in fp32: the halves' differences are exact, and when
//     the high halves differ |first term| >= 2^16 > |second term|, so rounding cannot change the sign; d is an
//     integer, so min(max(d + 1, 0), 1) is 1 for a kept entry and 0 for a dropped one.
//
// The algorithm is a template over a `Lanes` policy that executes each operation on whole vectors: on the NPU
// gf::VectorLanes (gf_tile_ops.h: one Ascend C vector instruction each), in the test a host emulation of those
// instructions (tests/ops/test_ascend_project.py), which is compared bit for bit with the numpy specification.
#pragma once

#include <cstdint>

#include "gf_philox.h"

namespace gf {

// Word vectors the generator needs at once: the counter (4), the two high products (2), four temporaries (one
// doubles as the fp32 mask at the end) and the broadcast round key (1).
constexpr uint32_t kPhiloxWordVectors = 11;

template <typename Lanes>
struct PhiloxRegisters {
    typename Lanes::Words c0, c1, c2, c3, high0, high1, t0, t1, t2, t3, key;
};

// dst = mulhi(a, multiplier), the high 32 bits of the 64-bit product; t0..t3 are scratch, dst differs from a.
template <typename Lanes, typename Words = typename Lanes::Words>
__aicore__ inline void MulHigh(Lanes& v, const Words& dst, const Words& a, uint32_t multiplier, const Words& t0,
                               const Words& t1, const Words& t2, const Words& t3)
{
    const uint32_t high = multiplier >> 16, low = multiplier & 0xFFFFu;
    v.ShiftRight(t0, a, 16);   // aH
    v.ShiftLeft(t1, a, 16);
    v.ShiftRight(t1, t1, 16);  // aL
    v.MulScalar(t2, t1, low);  // aL ML
    v.ShiftRight(t2, t2, 16);
    v.MulScalar(t3, t1, high);  // aL MH
    v.ShiftRight(t1, t3, 16);
    v.ShiftLeft(t3, t3, 16);
    v.ShiftRight(t3, t3, 16);
    v.Add(t2, t2, t3);         // (aL ML >> 16) + low16(aL MH)
    v.MulScalar(t3, t0, low);  // aH ML
    v.ShiftRight(dst, t3, 16);
    v.Add(dst, dst, t1);  // (aH ML >> 16) + (aL MH >> 16)
    v.ShiftLeft(t3, t3, 16);
    v.ShiftRight(t3, t3, 16);
    v.Add(t2, t2, t3);  // ... + low16(aH ML): the middle column, < 3 * 2^16
    v.ShiftRight(t2, t2, 16);
    v.Add(dst, dst, t2);         // its carry
    v.MulScalar(t0, t0, high);  // aH MH
    v.Add(dst, dst, t0);
}

// a ^= b, with `scratch` a temporary.
template <typename Lanes, typename Words = typename Lanes::Words>
__aicore__ inline void XorInPlace(Lanes& v, const Words& a, const Words& b, const Words& scratch)
{
    v.And(scratch, a, b);
    v.Or(a, a, b);
    v.Sub(a, a, scratch);
}

// r.c0 <- word 0 of Philox4x32-10 of the counters (r.c0, r.c1, r.c2, r.c3) under (keyLo, keyHi). The registers
// are rotated (the four counter words change places every round), so read the result through r.c0 afterwards.
template <typename Lanes>
__aicore__ inline void PhiloxWord0Lanes(Lanes& v, PhiloxRegisters<Lanes>& r, uint32_t keyLo, uint32_t keyHi)
{
    for (int round = 0; round < 10; ++round) {
        // c0' = hi(M1 c2) ^ c1 ^ keyLo; c1' = lo(M1 c2); c2' = hi(M0 c0) ^ c3 ^ keyHi; c3' = lo(M0 c0).
        const bool last = round == 9;  // only word 0 is wanted: the last round needs only c0'
        MulHigh(v, r.high1, r.c2, kPhiloxMultiplier1, r.t0, r.t1, r.t2, r.t3);
        XorInPlace(v, r.high1, r.c1, r.t0);
        v.Fill(r.key, keyLo);
        XorInPlace(v, r.high1, r.key, r.t0);
        if (!last) {
            MulHigh(v, r.high0, r.c0, kPhiloxMultiplier0, r.t0, r.t1, r.t2, r.t3);
            XorInPlace(v, r.high0, r.c3, r.t0);
            v.Fill(r.key, keyHi);
            XorInPlace(v, r.high0, r.key, r.t0);
            v.MulScalar(r.c0, r.c0, kPhiloxMultiplier0);  // lo(M0 c0), the next c3
            v.MulScalar(r.c2, r.c2, kPhiloxMultiplier1);  // lo(M1 c2), the next c1
        }
        const typename Lanes::Words oldC0 = r.c0, oldC1 = r.c1, oldC2 = r.c2, oldC3 = r.c3;
        r.c0 = r.high1;
        r.c1 = oldC2;
        r.c2 = r.high0;
        r.c3 = oldC0;
        r.high1 = oldC1;  // free until the next round writes it
        r.high0 = oldC3;
        keyLo += kPhiloxWeyl0;
        keyHi += kPhiloxWeyl1;
    }
}

// keep <- 1.0f where word >= threshold (unsigned), else 0.0f. `word` and `scratch` are destroyed; `keep` and
// `highFloats` are fp32 views of two further word vectors.
template <typename Lanes, typename Words = typename Lanes::Words, typename Floats = typename Lanes::Floats>
__aicore__ inline void KeepMaskFromWords(Lanes& v, const Floats& keep, const Floats& highFloats, const Words& word,
                                         const Words& scratch, uint32_t threshold)
{
    v.ShiftLeft(scratch, word, 16);
    v.ShiftRight(scratch, scratch, 16);  // wordL
    v.ShiftRight(word, word, 16);        // wordH
    v.ToFloat(keep, scratch);
    v.ToFloat(highFloats, word);
    v.AddsFloat(highFloats, highFloats, -static_cast<float>(threshold >> 16));
    v.MulsFloat(highFloats, highFloats, 65536.0f);
    v.AddsFloat(keep, keep, -static_cast<float>(threshold & 0xFFFFu));
    v.AddFloat(keep, keep, highFloats);  // d, an integer
    v.AddsFloat(keep, keep, 1.0f);
    v.MaxsFloat(keep, keep, 0.0f);
    v.MinsFloat(keep, keep, 1.0f);
}

// The keep mask (1.0f / 0.0f) of `rows` x `width` entries P[pair, firstRow + i, firstColumn + j], laid out with row
// stride `width`, into r.t1's fp32 view (returned). Counters: (column, row, pair, 0) as on the CPU.
template <typename Lanes>
__aicore__ inline typename Lanes::Floats KeepMaskLanes(Lanes& v, PhiloxRegisters<Lanes>& r, uint32_t pair,
                                                       uint32_t firstRow, uint32_t rows, uint32_t firstColumn,
                                                       uint32_t width, uint32_t keyLo, uint32_t keyHi,
                                                       uint32_t threshold)
{
    for (uint32_t i = 0; i < rows; ++i) {
        v.ColumnIndex(r.c0, i * width, firstColumn, width);
        v.FillRange(r.c1, i * width, firstRow + i, width);
    }
    v.Fill(r.c2, pair);
    v.Fill(r.c3, 0u);
    PhiloxWord0Lanes(v, r, keyLo, keyHi);
    const typename Lanes::Floats keep = v.AsFloats(r.t1);
    KeepMaskFromWords(v, keep, v.AsFloats(r.t3), r.c0, r.t2, threshold);
    return keep;
}

}  // namespace gf
