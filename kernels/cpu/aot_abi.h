// The calling convention of MindSpore's ops.Custom(func_type="aot") on CPU, and checked views of its arguments.
//
// MindSpore passes inputs, then outputs, as parallel arrays of data pointers, ranks, shapes and dtype names. The
// kernels never include MindSpore headers (they would pull in the whole IR); the only MindSpore type they see is
// `AotExtra`, and only as an opaque pointer in the shape-inference functions.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// The library is built with -fvisibility=hidden so that only the entry points below are visible to MindSpore's
// dlsym and nothing internal can collide with symbols of the other libraries in its process.
#define MFGF_EXPORT __attribute__((visibility("default")))

namespace mindspore {
class AotExtra;
}

namespace mfgf {

using Shape = std::vector<int64_t>;
using Shapes = std::vector<Shape>;

// MindSpore marks an unknown dimension with -1 and an unknown rank with a single -2.
constexpr int64_t kUnknownRank = -2;

inline Shape shape_of(const int* ndims, int64_t** shapes, int index) {
  return Shape(shapes[index], shapes[index] + ndims[index]);
}

inline bool is_unknown_rank(const Shape& shape) { return shape.size() == 1 && shape[0] == kUnknownRank; }

// A kernel entry point returns 0 on success; anything else makes MindSpore raise, so the message printed here is
// what the user sees next to MindSpore's generic "custom kernel failed" error.
inline int fail(const char* kernel, const std::string& problem) {
  std::fprintf(stderr, "mindformer_gf %s: %s\n", kernel, problem.c_str());
  return 1;
}

struct AotArgs {
  int count;
  void** data;
  int* ndims;
  int64_t** shapes;
  const char** dtypes;

  Shape shape(int index) const { return shape_of(ndims, shapes, index); }
  int64_t dim(int index, int axis) const { return shapes[index][axis]; }
  int64_t elements(int index) const {
    int64_t count = 1;
    for (int axis = 0; axis < ndims[index]; ++axis) count *= shapes[index][axis];
    return count;
  }
  bool has_dtype(int index, const char* dtype) const { return std::strcmp(dtypes[index], dtype) == 0; }

  template <typename T>
  T* ptr(int index) const {
    return static_cast<T*>(data[index]);
  }
};

// 0 when every tensor of the call is float32, else the failure naming the first other dtype.
inline int check_all_float32(const char* kernel, const AotArgs& args) {
  for (int index = 0; index < args.count; ++index) {
    if (!args.has_dtype(index, "float32")) {
      return fail(kernel, std::string("every tensor must be float32; cast before calling, got ") + args.dtypes[index]);
    }
  }
  return 0;
}

inline std::string shape_string(const Shape& shape) {
  std::string text = "[";
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    text += (axis ? ", " : "") + std::to_string(shape[axis]);
  }
  return text + "]";
}

}  // namespace mfgf
