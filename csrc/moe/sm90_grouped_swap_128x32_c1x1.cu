#include "fp8_grouped_sm90.cuh"
FUSEINFER_SM90_FP8_GROUPED(sm90_grouped_swap_128x32_c1x1, 128, 32, 1, 1, kCooperative, true)
