// The per-token-group FP8 quantizer with IEEE float math (the scale's division rounded to
// nearest): bit-identical to the reference.
#define FUSEINFER_QUANT_VARIANT precise
#include "group_quant_kernel.cuh"
