// The attention-dropout keep mask on the vector unit: the per-entry part of the hash of gf_dropout_hash.h (the CPU
// kernels and mindformer_gf/reference/attention_dropout.py define it), word = mix32(rowKey + columnCode), for
// `rows` x `width` entries at once, written with only the 32-bit integer operations the A2 (910B) vector unit has:
//   add a scalar, subtract, multiply by a scalar keeping the low 32 bits (int32 Adds / Sub / Muls),
//   logical shifts (uint32 ShiftRight),
//   bitwise And / Or (16-bit instructions; applied to both halves of a 32-bit lane they are the 32-bit ones),
//   and for the keep decision, int32 -> fp32 conversion and fp32 Adds / Maxs / Mins.
// There is no Xor, so a ^ b = (a | b) - (a & b) (the Or counts every bit set in either, the And the ones set in
// both; per 16-bit half no borrow crosses). The keep test: v = word >> 8 < 2^24 and the threshold t <= 2^24 are
// exact in fp32, so is v + (1 - t), an integer, and min(max(v + 1 - t, 0), 1) is 1 for a kept entry, 0 otherwise.
//
// The column codes mix32(headKey + column) do not depend on the row: computed once per key block into `codes`
// (ColumnCodesLanes) and added to each row's key. The algorithm is a template over a `Lanes` policy that executes
// each operation on whole vectors: on the NPU gf::VectorLanes (gf_tile_ops.h: one Ascend C vector instruction
// each), in the test a host emulation of those instructions (tests/ops/test_ascend_project.py), which is compared
// bit for bit with the numpy specification.
#pragma once

#include <cstdint>

#include "gf_dropout_hash.h"

namespace gf {

// Word vectors of rows x width lanes the mask needs: the words and two temporaries (one becomes the fp32 mask);
// plus one vector of `width` lanes for the column codes.
constexpr uint32_t kDropoutWordVectors = 3;

template <typename Lanes>
struct DropoutRegisters {
    typename Lanes::Words codes;         // width lanes: the key block's column codes
    typename Lanes::Words word, t0, t1;  // rows x width lanes
};

// x ^= x >> 16, with t0, t1 temporaries.
template <typename Lanes, typename Words = typename Lanes::Words>
__aicore__ inline void XorShift16(Lanes& v, const Words& x, const Words& t0, const Words& t1)
{
    v.ShiftRight(t0, x, 16);
    v.And(t1, x, t0);
    v.Or(x, x, t0);
    v.Sub(x, x, t1);
}

// x = mix32(x) lane by lane: 3 xorshifts of 4 instructions and 2 multiplies, 14 instructions.
template <typename Lanes, typename Words = typename Lanes::Words>
__aicore__ inline void Mix32Lanes(Lanes& v, const Words& x, const Words& t0, const Words& t1)
{
    XorShift16(v, x, t0, t1);
    v.MulScalar(x, x, kMixMultiplier);
    XorShift16(v, x, t0, t1);
    v.MulScalar(x, x, kMixMultiplier);
    XorShift16(v, x, t0, t1);
}

// r.codes <- mix32(headKey + firstColumn + lane) for the v.count lanes of a key block of the head whose key is
// headKey (the first lanes of r.t0 and r.t1 are the temporaries). The head's key is added after the index, not
// folded into CreateVecIndex's int32 start, so the only wrap-around relied on is Adds' (as for the row keys).
template <typename Lanes>
__aicore__ inline void ColumnCodesLanes(Lanes& v, DropoutRegisters<Lanes>& r, uint32_t headKey, uint32_t firstColumn)
{
    v.ColumnIndex(r.codes, 0, firstColumn, v.count);
    v.AddsRange(r.codes, 0, r.codes, headKey, v.count);
    v.Done();
    Mix32Lanes(v, r.codes, r.t0, r.t1);
}

// keep <- 1.0f where (word >> 8) >= threshold, else 0.0f (`word` is destroyed): 5 instructions.
template <typename Lanes, typename Words = typename Lanes::Words, typename Floats = typename Lanes::Floats>
__aicore__ inline void KeepMaskFromWords(Lanes& v, const Floats& keep, const Words& word, uint32_t threshold)
{
    v.ShiftRight(word, word, kDropoutWordShift);
    v.ToFloat(keep, word);
    v.AddsFloat(keep, keep, 1.0f - static_cast<float>(threshold));  // exact: threshold <= 2^24
    v.MaxsFloat(keep, keep, 0.0f);
    v.MinsFloat(keep, keep, 1.0f);
}

// The keep mask (1.0f / 0.0f) of `rows` x `width` entries P[pair, firstRow + i, column of code j] (headKey =
// DropoutHeadKey of the pair), laid out with row stride `width` (v.count = rows * width), into r.t0's fp32 view
// (returned). r.codes holds the key block's `width` column codes (ColumnCodesLanes). 1 + 14 + 5 instructions.
template <typename Lanes>
__aicore__ inline typename Lanes::Floats KeepMaskLanes(Lanes& v, DropoutRegisters<Lanes>& r, uint32_t headKey,
                                                       uint32_t firstRow, uint32_t rows, uint32_t width,
                                                       uint32_t threshold)
{
    for (uint32_t i = 0; i < rows; ++i) {
        v.AddsRange(r.word, i * width, r.codes, DropoutRowKey(headKey, firstRow + i), width);  // rows independent
    }
    v.Done();
    Mix32Lanes(v, r.word, r.t0, r.t1);
    const typename Lanes::Floats keep = v.AsFloats(r.t0);
    KeepMaskFromWords(v, keep, r.word, threshold);
    return keep;
}

}  // namespace gf
