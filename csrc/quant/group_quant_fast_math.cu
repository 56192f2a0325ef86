// The same quantizer built with --use_fast_math (module.json): approximate division and
// flush-to-zero, so a scale may differ from the reference's by one ulp. Kept beside the
// precise build so both can be timed in one run (fuseinfer bench quant) and the dispatch
// table can choose.
#define FUSEINFER_QUANT_VARIANT fast_math
#include "group_quant_kernel.cuh"
