// The TilingData macros of op_host/*_tiling.h (doc: 基础API/Kernel-Tiling, BEGIN_TILING_DATA_DEF), for the model:
// each class becomes a plain struct of its fields in order, with the set_<field> setters the host code calls, which
// is the layout CANN's generated kernel-side struct has (fields packed in declaration order).
#pragma once

#include <cstdint>

#include "tiling/tiling_api.h"

#define BEGIN_TILING_DATA_DEF(name) struct name {
#define TILING_DATA_FIELD_DEF(type, field) \
    type field = type();                   \
    void set_##field(type value) { field = value; }
#define TILING_DATA_FIELD_DEF_STRUCT(type, field) type field;
#define END_TILING_DATA_DEF }
#define REGISTER_TILING_DATA_CLASS(op, name)
