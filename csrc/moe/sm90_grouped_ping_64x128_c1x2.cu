#include "fp8_grouped_sm90.cuh"
FUSEINFER_SM90_FP8_GROUPED(sm90_grouped_ping_64x128_c1x2, 64, 128, 1, 2, kPingpong, false)
