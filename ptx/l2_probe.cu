// The L2-side probe as a kernel unit of its own (deepergemm/extension.py builds it with nvcc -cubin, like the GEMM
// variants; deepergemm/l2_sides.py launches it through the host binding's deepergemm_native::l2_probe).
#include "l2_probe.cuh"
