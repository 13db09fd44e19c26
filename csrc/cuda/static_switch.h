// Turn runtime enums into compile-time constants for kernel templates:
//   DTYPE_SWITCH(p.dtype, T, [&] { launch<T>(); });
// The body is a lambda so that it can `return`; unknown values throw.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>

#include "bnfused.h"

#define BNF_CASE_TYPE(ENUM, TYPE, NAME, ...) \
  case ENUM: {                               \
    using NAME = TYPE;                       \
    return __VA_ARGS__();                    \
  }

#define DTYPE_SWITCH(VALUE, NAME, ...)                                             \
  [&] {                                                                            \
    switch (VALUE) {                                                               \
      BNF_CASE_TYPE(::bnfused::DType::kFloat32, float, NAME, __VA_ARGS__)          \
      BNF_CASE_TYPE(::bnfused::DType::kFloat64, double, NAME, __VA_ARGS__)         \
      BNF_CASE_TYPE(::bnfused::DType::kFloat16, __half, NAME, __VA_ARGS__)         \
      BNF_CASE_TYPE(::bnfused::DType::kBFloat16, __nv_bfloat16, NAME, __VA_ARGS__) \
      default:                                                                     \
        throw std::runtime_error("bnfused: unsupported dtype");                    \
    }                                                                              \
  }()

#define BNF_CASE_VALUE(ENUM, NAME, ...) \
  case ENUM: {                          \
    constexpr auto NAME = ENUM;         \
    return __VA_ARGS__();               \
  }

#define ACTIVATION_SWITCH(VALUE, NAME, ...)                                \
  [&] {                                                                    \
    switch (VALUE) {                                                       \
      BNF_CASE_VALUE(::bnfused::Activation::kIdentity, NAME, __VA_ARGS__)  \
      BNF_CASE_VALUE(::bnfused::Activation::kRelu, NAME, __VA_ARGS__)      \
      BNF_CASE_VALUE(::bnfused::Activation::kLeakyRelu, NAME, __VA_ARGS__) \
      BNF_CASE_VALUE(::bnfused::Activation::kSilu, NAME, __VA_ARGS__)      \
      default:                                                             \
        throw std::runtime_error("bnfused: unsupported activation");       \
    }                                                                      \
  }()
