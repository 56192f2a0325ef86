#include "fp8_blockwise_sm90.cuh"
FUSEINFER_SM90_FP8_GEMM(sm90_coop_128x128_c1x2, 128, 128, 1, 2, kCooperative, kPersistent, false)
