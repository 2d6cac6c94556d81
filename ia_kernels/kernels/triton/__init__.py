"""The triton backend: Triton kernels and their launchers (GPU; CPU tensors under TRITON_INTERPRET=1)."""
