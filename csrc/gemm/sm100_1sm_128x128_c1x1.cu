#include "fp8_blockwise_sm100.cuh"
FUSEINFER_SM100_FP8_GEMM(sm100_1sm_128x128_c1x1, 128, 128, 1, 1, false, false)
