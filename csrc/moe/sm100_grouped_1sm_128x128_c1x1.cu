#include "fp8_grouped_sm100.cuh"
FUSEINFER_SM100_FP8_GROUPED(sm100_grouped_1sm_128x128_c1x1, 128, 128, false)
