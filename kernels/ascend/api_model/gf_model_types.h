// Storage types of the functional model: IEEE binary16 (`half`) and bfloat16 (`bfloat16_t`), 16 bits each, converted
// from fp32 with round-to-nearest-even (ties to even, overflow to infinity, subnormals kept, NaN stays NaN) as the
// Ascend C Cast documentation's CAST_RINT specifies, and widened to fp32 exactly (CAST_NONE). Ours, written from the
// IEEE 754 formats; no CANN code.
#pragma once

#include <cstdint>
#include <cstring>

namespace gfm {

inline uint32_t FloatBits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float BitsFloat(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// fp32 -> binary16, round to nearest, ties to even.
inline uint16_t FloatToHalfBits(float value)
{
    const uint32_t u = FloatBits(value);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t magnitude = u & 0x7FFFFFFFu;
    if (magnitude >= 0x7F800000u) {  // inf or NaN
        return static_cast<uint16_t>(sign | 0x7C00u | (magnitude > 0x7F800000u ? 0x200u : 0u));
    }
    const int exponent = static_cast<int>(magnitude >> 23) - 127;
    if (exponent > 15) {
        return static_cast<uint16_t>(sign | 0x7C00u);
    }
    uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;  // 24 bits with the hidden one
    int shift;                                                 // bits dropped from the 24-bit significand
    uint32_t halfExponent;
    if (exponent >= -14) {
        shift = 13;
        halfExponent = static_cast<uint32_t>(exponent + 15);
    } else {
        shift = 13 + (-14 - exponent);  // subnormal half
        halfExponent = 0;
        if (shift > 24) {
            return static_cast<uint16_t>(sign);  // below half the smallest subnormal: rounds to zero
        }
    }
    uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (kept & 1u))) {
        ++kept;
    }
    // For normals `kept` has the hidden bit at 1 << 10; a carry to 1 << 11 bumps the exponent (the add does it).
    uint32_t result;
    if (halfExponent == 0) {
        result = kept;  // subnormal, or the smallest normal after a carry
    } else {
        result = (halfExponent << 10) + (kept - 0x400u);
    }
    if (result >= 0x7C00u) {
        result = 0x7C00u;
    }
    return static_cast<uint16_t>(sign | result);
}

inline float HalfBitsToFloat(uint16_t h)
{
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu;
    const uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1F) {
        return BitsFloat(sign | 0x7F800000u | (mantissa << 13));
    }
    if (exponent == 0) {
        const float value = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // mantissa * 2^-24, exact
        return sign ? -value : value;
    }
    return BitsFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// fp32 -> bfloat16, round to nearest, ties to even.
inline uint16_t FloatToBf16Bits(float value)
{
    const uint32_t u = FloatBits(value);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    }
    const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float Bf16BitsToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

}  // namespace gfm

// The kernels name these types unqualified (DTYPE_X is `half` or `bfloat16_t`).
struct half {
    uint16_t bits = 0;
    half() = default;
    half(float f) : bits(gfm::FloatToHalfBits(f)) {}
    operator float() const { return gfm::HalfBitsToFloat(bits); }
};

struct bfloat16_t {
    uint16_t bits = 0;
    bfloat16_t() = default;
    bfloat16_t(float f) : bits(gfm::FloatToBf16Bits(f)) {}
    operator float() const { return gfm::Bf16BitsToFloat(bits); }
};

static_assert(sizeof(half) == 2 && sizeof(bfloat16_t) == 2, "16-bit storage");
