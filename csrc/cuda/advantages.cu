// CUDA kernels of the group-advantage op family (to be filled in).
