// The attention-dropout generator of the Ascend kernels: the same Philox4x32-10 and keep rule as
// kernels/cpu/tile_kernels.h and mindformer_gf/reference/attention_dropout.py, so a seed gives the same mask on CPU
// and on the NPU. Keep P[b, h, i, j] iff word 0 of Philox4x32-10(counter = (j, i, b * H + h, 0), key = (seed_lo,
// seed_hi)) >= floor(p * 2^32); what is kept is scaled by 1 / (1 - p).
//
// Runs on the AI core's scalar unit: the A2 vector unit has no 32 x 32 -> 64-bit multiply (Mull is an Atlas 350
// instruction), and Philox needs two per round. Plain C++ apart from the __aicore__ qualifier, so the unit test
// compiles this header with g++ and compares it with the numpy specification.
#pragma once

#if !defined(__aicore__)
#define __aicore__
#endif

namespace gf {

constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;

// Word 0 of Philox4x32-10 (Salmon et al., SC'11) for counter (c0, c1, c2, c3) under key (keyLo, keyHi).
__aicore__ inline uint32_t PhiloxWord0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t keyLo,
                                       uint32_t keyHi)
{
    for (int round = 0; round < 10; ++round) {
        const uint64_t product0 = static_cast<uint64_t>(kPhiloxMultiplier0) * c0;
        const uint64_t product1 = static_cast<uint64_t>(kPhiloxMultiplier1) * c2;
        const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ c1 ^ keyLo;
        const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ keyHi;
        c0 = next0;
        c1 = static_cast<uint32_t>(product1);
        c2 = next2;
        c3 = static_cast<uint32_t>(product0);
        keyLo += kPhiloxWeyl0;
        keyHi += kPhiloxWeyl1;
    }
    return c0;
}

// floor(p * 2^32) for 0 <= p < 1. p * 2^32 is exact in float (a power-of-two scaling), and truncating it is the
// floor the CPU kernel takes in double. Converted through int32 because values from 2^31 up have no signed
// conversion on every core; above 2^31 the float's spacing is >= 256, so subtracting 2^31 is exact.
__aicore__ inline uint32_t DropThreshold(float dropProbability)
{
    const float scaled = dropProbability * 4294967296.0f;
    if (scaled >= 2147483648.0f) {
        return static_cast<uint32_t>(static_cast<int32_t>(scaled - 2147483648.0f)) + 2147483648u;
    }
    return static_cast<uint32_t>(static_cast<int32_t>(scaled));
}

// Whether P[b, h, row, column] survives, for pair = b * heads + h.
__aicore__ inline bool KeepProbability(uint32_t column, uint32_t row, uint32_t pair, uint32_t keyLo, uint32_t keyHi,
                                       uint32_t threshold)
{
    return PhiloxWord0(column, row, pair, 0u, keyLo, keyHi) >= threshold;
}

}  // namespace gf
