#include "fp8_blockwise_sm90.cuh"
FUSEINFER_SM90_FP8_GEMM(sm90_ping_64x128_c1x2, 64, 128, 1, 2, kPingpong, kPersistent, false)
