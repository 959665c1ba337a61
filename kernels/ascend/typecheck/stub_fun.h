// Stand-in for CANN's stub_fun.h, which declares the ~5,000 CCE intrinsics for the Ascend C CPU-debug build and is
// not published (it comes with libcpudebug_model.a from Huawei's servers). tools/ascend_check.py type-checks the
// kernels with it: written for that check only, it declares just the types and intrinsics that the public
// Ascend C headers call on the paths our kernels instantiate for arch 2201 (910B). Nothing here is linked or run.
//
// Types and enumerators are spelled as the public headers use them (pipe_t, event_t, QuantMode_t::..., VA0, ...);
// their values are irrelevant to a type-check. Intrinsics are variadic templates: the headers call each with
// several argument lists (one per dtype and overload), and the checked code is ours, not the intrinsics' calls.
#pragma once

#include <cstdint>

#include "stub_def.h"

enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_MTE4, PIPE_MTE5, PIPE_V2,
              PIPE_FIX, VIRTUAL_PIPE_MTE2_L1A, VIRTUAL_PIPE_MTE2_L1B, PIPE_NUM };
enum event_t { EVENT_ID0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };
enum mem_dsb_t { DSB_ALL, DSB_DDR, DSB_UB, DSB_SEQ };
enum ub_addr8_t { VA0, VA1, VA2, VA3, VA4, VA5, VA6, VA7 };
enum class dcci_dst_t { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };
enum class cache_line_t { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class Order_t { VALUE_INDEX, INDEX_VALUE, ONLY_VALUE, ONLY_INDEX };
enum class pad_t { PAD_NONE, PAD_MODE1, PAD_MODE2, PAD_MODE3, PAD_MODE4, PAD_MODE5, PAD_MODE6, PAD_MODE7, PAD_MODE8 };
enum mem_t { MEM_L1, MEM_L0A, MEM_L0B, MEM_L0C, MEM_UB, MEM_BT, MEM_FB };
enum addr_cal_mode_t { inc, dec };
enum vld_va_reg_mode_t { L128, H128 };
enum atomic_type_t { ATOMIC_NONE_TYPE, ATOMIC_F32, ATOMIC_F16, ATOMIC_S16, ATOMIC_S32, ATOMIC_S8, ATOMIC_BF16 };
enum atomic_op_t { ATOMIC_SUM, ATOMIC_MAX, ATOMIC_MIN };
enum class QuantMode_t {
    NoQuant, F322F16, F322BF16, DEQF16, VDEQF16, DEQS16, VDEQS16, REQ8, VREQ8, REQ4, VREQ4, QF322B8_PRE,
    VQF322B8_PRE, QF322F16_PRE, VQF322F16_PRE, QF322BF16_PRE, VQF322BF16_PRE, QF322F32_PRE, VQF322F32_PRE,
    QF322FP8_PRE, VQF322FP8_PRE, QF322HIF8_PRE, VQF322HIF8_PRE, QF322HIF8_PRE_HYBRID, VQF322HIF8_PRE_HYBRID,
    QS322BF16_PRE, VQS322BF16_PRE, QF162B8_PRE, VQF162B8_PRE, QF162S16_PRE, VQF162S16_PRE, QF162S4_PRE,
    VQF162S4_PRE
};

// What a scalar conversion intrinsic returns (conv_f322f16o(...) -> half, conv_f322s32r(...) -> int32_t, ...):
// converts to whatever the call site needs.
struct GfStubValue {
    template <typename T>
    operator T() const { return T(); }
};

#define GF_STUB_INTRINSIC(name)            \
    template <typename... Args>            \
    inline void name(Args&&...) {}
#define GF_STUB_INTRINSIC_VALUE(name)      \
    template <typename... Args>            \
    inline GfStubValue name(Args&&...) { return {}; }
#define GF_STUB_INTRINSIC_RETURNING(type, name) \
    template <typename... Args>                 \
    inline type name(Args&&...) { return type(); }

#include "stub_intrinsics.inc"
