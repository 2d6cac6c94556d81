"""The kernels, one package per backend and one module per op in each (the grid of ops x backends):

    kernels/<backend>/<op>.py     backend in torch, cpu, cuda, triton; op in logprobs, ppo, advantages

Every module of an op offers the same functions with the same signatures (see the op's front-end
in ia_kernels/ops/). cpu and cuda are thin launchers of the compiled modules (csrc/cpu, csrc/cuda);
triton holds the Triton kernels and their launchers; torch is vectorised PyTorch. Nothing here
validates user input: the front-ends do, once.

Every module here is registered for an op in ia_kernels/backends.py, and is reached only through
that registry; no backend imports another's module (what cpu and cuda share, the launchers'
arguments, is in ia_kernels/_native.py; the custom ops whose kernels they register are defined in
ia_kernels/ops/custom_ops.py). A kernel that no op selects lives in ia_kernels/experimental/.
tests/test_backend_grid.py checks all of this.
"""
