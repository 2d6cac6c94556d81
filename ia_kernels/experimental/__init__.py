"""Experimental kernels: compiled and tested (benchmarks/gpu_build.py, tests/), but selected by no op.

They live outside the op x backend grid (ia_kernels/kernels/), which holds only the modules the
registry (ia_kernels/backends.py) can select. A kernel graduates into the grid, under an op's
front-end and a registry entry, once a GPU run has measured it against what it would replace.

    linear_stats.py   fused LM-head GEMM + row statistics (Triton): log-probs without the logits
"""
