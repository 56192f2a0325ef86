// Argument checks shared by the op launchers: each failure names the op and the argument
// and raises ValueError in Python, like the checks of the CPU reference path.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#define FUSEINFER_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK_VALUE(cond, "fuseinfer.", op, ": ", arg, " ", __VA_ARGS__)

#define FUSEINFER_CUDA_CHECK(expr)                                                    \
  do {                                                                                \
    cudaError_t status_ = (expr);                                                     \
    TORCH_CHECK(status_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(status_), \
                " (", #expr, ")");                                                    \
  } while (0)
