"""Loading the compiled modules, and turning tensors into the raw arguments they take.

The native modules are optional at import time: a missing build is reported when a native backend
is first asked for, with the command that fixes it.
"""

from __future__ import annotations

import importlib

import torch

_INSTALL_ADVICE = (
    "reinstall ia_kernels from a source checkout with a C++17 compiler and OpenMP available: "
    "`pip install -e .` (add `--no-build-isolation` to reuse the installed build tools)"
)


_LOADED: dict[str, tuple] = {}


def _load(name: str):
    # A plain dict, not functools.lru_cache: torch.compile traces through this on every call and
    # warns about lru_cache wrappers.
    if name not in _LOADED:
        try:
            _LOADED[name] = (importlib.import_module(f"ia_kernels.{name}"), None)
        except ImportError as exc:  # the build is missing or was made for another Python
            _LOADED[name] = (None, str(exc))
    return _LOADED[name]


def cpu_module():
    """The compiled CPU kernels (`ia_kernels._C`), or a RuntimeError with install advice."""
    module, err = _load("_C")
    if module is None:
        raise RuntimeError(f"the native CPU kernels (ia_kernels._C) are not built: {err}; {_INSTALL_ADVICE}")
    return module


def cuda_module():
    """The compiled CUDA kernels (`ia_kernels._cuda`), or a RuntimeError with install advice."""
    module, err = _load("_cuda")
    if module is None:
        raise RuntimeError(
            f"the native CUDA kernels (ia_kernels._cuda) are not built: {err}; install with nvcc on "
            f"PATH and IA_KERNELS_CUDA unset or ON; {_INSTALL_ADVICE}"
        )
    return module


def has_cpu_module() -> bool:
    return _load("_C")[0] is not None


def has_cuda_module() -> bool:
    return _load("_cuda")[0] is not None


def ptr(t: torch.Tensor | None) -> int:
    """The address of a tensor's first element, or 0 for None (the kernels read 0 as absent)."""
    return 0 if t is None else t.data_ptr()


def stream_of(t: torch.Tensor) -> int:
    """The raw handle of the current CUDA stream on t's device (0 on CPU)."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream
