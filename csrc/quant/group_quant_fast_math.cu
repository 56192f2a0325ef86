// The same quantizer built with --use_fast_math (module.json): each value's division by its
// scale is approximate and denormals flush to zero, so a value may land one e4m3 step from
// the reference; the scales themselves stay exact (an IEEE division in the kernel). Kept
// beside the precise build so both can be timed in one run (fuseinfer bench quant) and the
// dispatch table can choose.
#define FUSEINFER_QUANT_VARIANT fast_math
#include "group_quant_kernel.cuh"
