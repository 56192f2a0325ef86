#include "fp8_blockwise_sm100.cuh"
FUSEINFER_SM100_FP8_GEMM(sm100_swap_1sm_128x32_c1x1, 128, 32, 1, 1, false, true)
