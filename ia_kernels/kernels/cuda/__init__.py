"""The cuda backend: launchers of the CUDA kernels in ia_kernels._cuda (csrc/cuda/), on the caller's stream."""
