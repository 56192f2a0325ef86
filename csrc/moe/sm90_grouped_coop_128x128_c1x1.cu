#include "fp8_grouped_sm90.cuh"
FUSEINFER_SM90_FP8_GROUPED(sm90_grouped_coop_128x128_c1x1, 128, 128, 1, 1, kCooperative, false)
