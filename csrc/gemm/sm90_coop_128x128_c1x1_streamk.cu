// CUTLASS 4.2's StreamK scheduler does not compile with PDL (see the runner).
#define FUSEINFER_FP8_GEMM_NO_PDL
#include "fp8_blockwise_sm90.cuh"
FUSEINFER_SM90_FP8_GEMM(sm90_coop_128x128_c1x1_streamk, 128, 128, 1, 1, kCooperative, kStreamK, false)
