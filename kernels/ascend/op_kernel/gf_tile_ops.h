// Vector-unit building blocks shared by the four kernels: row-wise operations on row-major fp32 tiles in UB.
//
// A "row value" tensor holds one value per row in the broadcast layout [rows x 8] (one 32-byte block per row, as
// Brcb writes it and as the softmax statistics of SoftmaxFlashV2 are kept): level-0 instructions read it with
// block stride 0, so every lane of row r sees rowValue[r]. A "column vector" (gamma, beta, a key-mask bias) is one
// row of the tile's width read with repeat stride 0, so every row sees the same vector.
#pragma once

#include "kernel_operator.h"

#include "gf_dropout_lanes.h"

namespace gf {

using AscendC::LocalTensor;

constexpr uint32_t kFloatLanes = 64;      // fp32 lanes of one 256-byte vector repeat
constexpr uint32_t kFloatsPerBlock = 8;   // fp32 values in one 32-byte block
// Score given to keys outside the mask and to the padding of partial tiles: finite, so that no -inf - (-inf)
// appears in the online softmax, and exp() of it (minus any real row maximum) is exactly 0 in fp32.
constexpr float kMaskedScore = -1.0e30f;

__aicore__ inline uint64_t LanesFrom(uint32_t column, uint32_t rowLength)
{
    return rowLength - column < kFloatLanes ? rowLength - column : kFloatLanes;
}

enum class RowOp { kAdd, kSub, kMul, kDiv };

// dst[r, c] = src[r, c] (op) rowValue[r] for r < rows, c < rowLength (a multiple of 8, at most 255 blocks).
template <RowOp op>
__aicore__ inline void ApplyRowValue(const LocalTensor<float>& dst, const LocalTensor<float>& src,
                                     const LocalTensor<float>& rowValue, uint32_t rows, uint32_t rowLength)
{
    const uint8_t rowBlocks = static_cast<uint8_t>(rowLength / kFloatsPerBlock);
    const AscendC::BinaryRepeatParams params(1, 1, 0, rowBlocks, rowBlocks, 1);
    for (uint32_t column = 0; column < rowLength; column += kFloatLanes) {
        const uint64_t lanes = LanesFrom(column, rowLength);
        const uint8_t repeats = static_cast<uint8_t>(rows);
        if constexpr (op == RowOp::kAdd) {
            AscendC::Add(dst[column], src[column], rowValue, lanes, repeats, params);
        } else if constexpr (op == RowOp::kSub) {
            AscendC::Sub(dst[column], src[column], rowValue, lanes, repeats, params);
        } else if constexpr (op == RowOp::kMul) {
            AscendC::Mul(dst[column], src[column], rowValue, lanes, repeats, params);
        } else {
            AscendC::Div(dst[column], src[column], rowValue, lanes, repeats, params);
        }
    }
}

// dst[r, c] = src[r, c] (op) column[c] for every row r < rows.
template <RowOp op>
__aicore__ inline void ApplyColumnVector(const LocalTensor<float>& dst, const LocalTensor<float>& src,
                                         const LocalTensor<float>& column, uint32_t rows, uint32_t rowLength)
{
    const uint8_t rowBlocks = static_cast<uint8_t>(rowLength / kFloatsPerBlock);
    const AscendC::BinaryRepeatParams params(1, 1, 1, rowBlocks, rowBlocks, 0);
    for (uint32_t start = 0; start < rowLength; start += kFloatLanes) {
        const uint64_t lanes = LanesFrom(start, rowLength);
        const uint8_t repeats = static_cast<uint8_t>(rows);
        if constexpr (op == RowOp::kAdd) {
            AscendC::Add(dst[start], src[start], column[start], lanes, repeats, params);
        } else if constexpr (op == RowOp::kSub) {
            AscendC::Sub(dst[start], src[start], column[start], lanes, repeats, params);
        } else if constexpr (op == RowOp::kMul) {
            AscendC::Mul(dst[start], src[start], column[start], lanes, repeats, params);
        } else {
            AscendC::Div(dst[start], src[start], column[start], lanes, repeats, params);
        }
    }
}

// sums[r] = sum over c < rowLength of tile[r, c], for r < rows, written contiguously. Each row is first folded to
// 64 lanes in `fold` ([rows x 64] fp32), then one WholeReduceSum repeat per row adds the 64 lanes.
__aicore__ inline void RowSums(const LocalTensor<float>& sums, const LocalTensor<float>& tile,
                               const LocalTensor<float>& fold, uint32_t rows, uint32_t rowLength)
{
    const uint8_t rowBlocks = static_cast<uint8_t>(rowLength / kFloatsPerBlock);
    const uint8_t repeats = static_cast<uint8_t>(rows);
    if (rowLength <= kFloatLanes) {
        AscendC::WholeReduceSum(sums, tile, static_cast<int32_t>(rowLength), repeats, 1, 1, rowBlocks);
        return;
    }
    constexpr uint8_t kFoldBlocks = kFloatLanes / kFloatsPerBlock;
    // The first 64 columns seed the fold (a copy through Adds 0); later chunks, possibly partial, add into it.
    AscendC::Adds(fold, tile, 0.0f, kFloatLanes, repeats, AscendC::UnaryRepeatParams(1, 1, kFoldBlocks, rowBlocks));
    AscendC::PipeBarrier<PIPE_V>();
    const AscendC::BinaryRepeatParams addParams(1, 1, 1, kFoldBlocks, kFoldBlocks, rowBlocks);
    for (uint32_t column = kFloatLanes; column < rowLength; column += kFloatLanes) {
        AscendC::Add(fold, fold, tile[column], LanesFrom(column, rowLength), repeats, addParams);
        AscendC::PipeBarrier<PIPE_V>();
    }
    AscendC::WholeReduceSum(sums, fold, static_cast<int32_t>(kFloatLanes), repeats, 1, 1, kFoldBlocks);
}

// Contiguous per-row values [rows] -> the broadcast layout [rows x 8]; Brcb takes 8 rows per repeat, so `values`
// must be readable up to the next multiple of 8 rows.
__aicore__ inline void BroadcastRows(const LocalTensor<float>& broadcast, const LocalTensor<float>& values,
                                     uint32_t rows)
{
    const uint8_t repeats = static_cast<uint8_t>((rows + kFloatsPerBlock - 1) / kFloatsPerBlock);
    AscendC::Brcb(broadcast, values, repeats, AscendC::BrcbRepeatParams(1, kFloatsPerBlock));
}

// The broadcast layout [rows x 8] -> contiguous values [rows]: lane 0 of each row's block, summed alone.
__aicore__ inline void FirstLanes(const LocalTensor<float>& values, const LocalTensor<float>& broadcast, uint32_t rows)
{
    AscendC::WholeReduceSum(values, broadcast, 1, static_cast<uint8_t>(rows), 1, 1, 1);
}

// tile[r, c] = value for rows r < rows and columns from `firstColumn` to the end of the row: the columns of a
// partial key block (or the rows of a partial query block) that no real key or query occupies.
__aicore__ inline void FillColumnsFrom(const LocalTensor<float>& tile, uint32_t rows, uint32_t rowLength,
                                       uint32_t firstColumn, float value)
{
    if (rows == 0 || firstColumn >= rowLength) {
        return;
    }
    const uint8_t rowBlocks = static_cast<uint8_t>(rowLength / kFloatsPerBlock);
    for (uint32_t start = firstColumn / kFloatLanes * kFloatLanes; start < rowLength; start += kFloatLanes) {
        const uint32_t lanes = static_cast<uint32_t>(LanesFrom(start, rowLength));
        const uint32_t skip = firstColumn > start ? firstColumn - start : 0;
        // Bit-wise mask: lanes [skip, lanes) of this 64-lane chunk (fp32 uses only the first word).
        uint64_t mask[2] = {0, 0};
        const uint64_t upTo = lanes == kFloatLanes ? ~0ULL : ((1ULL << lanes) - 1);
        mask[0] = upTo & ~((skip == 0) ? 0ULL : ((1ULL << skip) - 1));
        AscendC::Duplicate(tile[start], value, mask, static_cast<uint8_t>(rows), 1, rowBlocks);
    }
}

// Rows [firstRow, totalRows) of a [totalRows x rowLength] tile set to `value`: the rows past a partial query block.
__aicore__ inline void FillRowsFrom(const LocalTensor<float>& tile, uint32_t totalRows, uint32_t rowLength,
                                    uint32_t firstRow, float value)
{
    if (firstRow < totalRows) {
        AscendC::Duplicate(tile[firstRow * rowLength], value, static_cast<int32_t>((totalRows - firstRow) * rowLength));
    }
}

// The operations of gf_dropout_lanes.h as Ascend C vector instructions on `count` 32-bit lanes in UB (count a
// multiple of 64, so every instruction runs whole 256-byte repeats). Each waits for the one before it (the hash is
// one dependency chain), except AddsRange, whose rows are independent: the caller calls Done() after the last.
struct VectorLanes {
    using Words = LocalTensor<int32_t>;
    using Floats = LocalTensor<float>;
    int32_t count;

    __aicore__ inline void Done() const { AscendC::PipeBarrier<PIPE_V>(); }
    __aicore__ inline void ShiftRight(const Words& d, const Words& a, uint32_t bits) const
    {
        AscendC::ShiftRight(d.ReinterpretCast<uint32_t>(), a.ReinterpretCast<uint32_t>(), bits, count);  // logical
        Done();
    }
    __aicore__ inline void MulScalar(const Words& d, const Words& a, uint32_t multiplier) const
    {
        AscendC::Muls(d, a, static_cast<int32_t>(multiplier), count);  // low 32 bits of the product
        Done();
    }
    __aicore__ inline void AddsRange(const Words& d, uint32_t offset, const Words& a, uint32_t value, uint32_t n) const
    {
        AscendC::Adds(d[offset], a, static_cast<int32_t>(value), static_cast<int32_t>(n));  // int32: wraps mod 2^32
    }
    __aicore__ inline void Sub(const Words& d, const Words& a, const Words& b) const
    {
        AscendC::Sub(d, a, b, count);
        Done();
    }
    // And / Or exist for 16-bit lanes only: on the uint16 view, both halves of every word at once.
    __aicore__ inline void And(const Words& d, const Words& a, const Words& b) const
    {
        AscendC::And(d.ReinterpretCast<uint16_t>(), a.ReinterpretCast<uint16_t>(), b.ReinterpretCast<uint16_t>(),
                     2 * count);
        Done();
    }
    __aicore__ inline void Or(const Words& d, const Words& a, const Words& b) const
    {
        AscendC::Or(d.ReinterpretCast<uint16_t>(), a.ReinterpretCast<uint16_t>(), b.ReinterpretCast<uint16_t>(),
                    2 * count);
        Done();
    }
    __aicore__ inline void ColumnIndex(const Words& d, uint32_t offset, uint32_t first, uint32_t n) const
    {
        AscendC::CreateVecIndex(d[offset], static_cast<int32_t>(first), n);
        Done();
    }
    __aicore__ inline Floats AsFloats(const Words& w) const { return w.ReinterpretCast<float>(); }
    __aicore__ inline void ToFloat(const Floats& d, const Words& s) const
    {
        AscendC::Cast(d, s, AscendC::RoundMode::CAST_NONE, count);  // exact: the values are below 2^24
        Done();
    }
    __aicore__ inline void AddsFloat(const Floats& d, const Floats& a, float s) const
    {
        AscendC::Adds(d, a, s, count);
        Done();
    }
    __aicore__ inline void MaxsFloat(const Floats& d, const Floats& a, float s) const
    {
        AscendC::Maxs(d, a, s, count);
        Done();
    }
    __aicore__ inline void MinsFloat(const Floats& d, const Floats& a, float s) const
    {
        AscendC::Mins(d, a, s, count);
        Done();
    }
};

// The dropout registers in `buffer`: the column codes (`width` lanes), then kDropoutWordVectors vectors of `lanes`.
__aicore__ inline DropoutRegisters<VectorLanes> DropoutRegistersIn(AscendC::TBuf<AscendC::TPosition::VECCALC>& buffer,
                                                                   uint32_t lanes, uint32_t width)
{
    const LocalTensor<int32_t> words = buffer.Get<int32_t>();
    DropoutRegisters<VectorLanes> r;
    r.codes = words;
    LocalTensor<int32_t>* all[] = {&r.word, &r.t0, &r.t1};
    static_assert(sizeof(all) / sizeof(all[0]) == kDropoutWordVectors, "one vector per register");
    for (uint32_t i = 0; i < kDropoutWordVectors; ++i) {
        *all[i] = words[width + i * lanes];
    }
    return r;
}

// What every dropout mask of one probability tile shares: the registers (chunks of `chunkRows` rows), the key
// block's column codes (computed here, once per tile) and the head's key.
struct DropoutTile {
    DropoutRegisters<VectorLanes> registers;
    uint32_t headKey;
};

__aicore__ inline DropoutTile StartDropoutTile(AscendC::TBuf<AscendC::TPosition::VECCALC>& buffer, uint32_t chunkRows,
                                               uint32_t bc, uint32_t seedLo, uint32_t seedHi, uint32_t pair,
                                               uint32_t keyStart)
{
    DropoutTile tile{DropoutRegistersIn(buffer, chunkRows * bc, bc), DropoutHeadKey(seedLo, seedHi, pair)};
    VectorLanes columns{static_cast<int32_t>(bc)};
    ColumnCodesLanes(columns, tile.registers, tile.headKey, keyStart);
    return tile;
}

// Scalar unit <-> vector unit and MTE3 -> scalar hand-offs that the compiler's automatic synchronisation cannot
// see: UB written element by element (dropout) before vector instructions read it, and tiles copied to GM before
// the cube core (another core) is told to read them.
template <AscendC::HardEvent event>
__aicore__ inline void WaitFor()
{
    const event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(event));
    AscendC::SetFlag<event>(id);
    AscendC::WaitFlag<event>(id);
}

}  // namespace gf
