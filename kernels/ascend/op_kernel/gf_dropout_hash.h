// The attention-dropout generator of the Ascend kernels, scalar part: the same hash and keep rule as
// kernels/cpu/tile_kernels.h and mindformer_gf/reference/attention_dropout.py, so a seed gives the same mask on CPU
// and on the NPU. Keep P[b, h, i, j] iff
//     DropoutWord(DropoutRowKey(headKey, i), DropoutColumnCode(headKey, j)) >> 8
//         >= floor(p * 2^24),
// and scale what is kept by 1 / (1 - p). The head and row keys are a few scalar operations per head and per row
// (this header, on the scalar unit); the per-entry part, one add and one mix32, runs on the vector unit
// (gf_dropout_lanes.h). Plain C++ apart from the __aicore__ qualifier, so the unit test compiles this header with g++
// and compares it with the numpy specification.
#pragma once

#include <cstdint>

#if !defined(__aicore__)
#define __aicore__
#endif

namespace gf {

// The multiply-xorshift finaliser (Thomas Mueller's, as listed by hash-prospector), modulo 2^32.
constexpr uint32_t kMixMultiplier = 0x45D9F3Bu;
// An entry is kept iff (word >> kDropoutWordShift) >= the 24-bit threshold: a value below 2^24, exact in fp32.
constexpr uint32_t kDropoutWordShift = 8;

__aicore__ inline uint32_t Mix32(uint32_t x)
{
    x = ((x >> 16) ^ x) * kMixMultiplier;
    x = ((x >> 16) ^ x) * kMixMultiplier;
    return (x >> 16) ^ x;
}

__aicore__ inline uint32_t DropoutHeadKey(uint32_t seedLo, uint32_t seedHi, uint32_t pair)
{
    return Mix32(seedLo ^ Mix32(seedHi ^ Mix32(pair)));
}

__aicore__ inline uint32_t DropoutRowKey(uint32_t headKey, uint32_t row) { return Mix32(headKey ^ Mix32(row)); }

// Head-dependent, so rows of two heads that happen to share a 32-bit row key still draw different masks.
__aicore__ inline uint32_t DropoutColumnCode(uint32_t headKey, uint32_t column) { return Mix32(headKey + column); }

__aicore__ inline uint32_t DropoutWord(uint32_t rowKey, uint32_t columnCode) { return Mix32(rowKey + columnCode); }

// floor(p * 2^24) for 0 <= p < 1: p * 2^24 is exact in float (a power-of-two scaling) and below 2^24, and
// truncating it is the floor the CPU kernel takes in double.
__aicore__ inline uint32_t DropThreshold(float dropProbability)
{
    return static_cast<uint32_t>(static_cast<int32_t>(dropProbability * 16777216.0f));
}

}  // namespace gf
