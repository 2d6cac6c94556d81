"""Triton kernels (GPU; on CPU tensors they run under TRITON_INTERPRET=1). Imported lazily."""
