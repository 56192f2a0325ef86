#include "fp8_blockwise_sm100.cuh"
FUSEINFER_SM100_FP8_GEMM(sm100_2sm_256x128_c2x1, 256, 128, 2, 1, true, false)
