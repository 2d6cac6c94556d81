"""Test-wide set-up: Triton kernels run on CPU tensors through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so it is set here, before the
test modules import ia_kernels' Triton kernels or Liger-Kernel.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
