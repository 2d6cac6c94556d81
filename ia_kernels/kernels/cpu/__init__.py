"""The cpu backend: launchers of the OpenMP kernels in ia_kernels._C (csrc/cpu/)."""
