"""The ia_kernels benchmark suite: `python -m benchmarks NAME [--quick]` (see harness.py)."""
