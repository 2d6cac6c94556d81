"""Backend registry and selection.

Every op family registers its implementations under the backend names below. Selection order:
the call's `backend=` argument, else the `IA_KERNELS_BACKEND` environment variable (applied to the
ops that implement the backend it names), else the fastest backend that can run on the tensors'
device. Asking for a backend that an op lacks, or that cannot run here, raises a ValueError that
names the ones that exist and why the others are out.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _native

BACKEND_NAMES = ("torch", "cpu", "triton", "cuda")
ENV_VAR = "IA_KERNELS_BACKEND"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _why_not_torch(device: torch.device) -> str | None:
    return None


def _why_not_cpu(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"runs on CPU tensors only (got {device.type})"
    if not _native.has_cpu_module():
        return "ia_kernels._C is not built"
    return None


def _why_not_triton(device: torch.device) -> str | None:
    if not triton_installed():
        return "triton is not installed"
    if device.type == "cpu" and not triton_interpreting():
        return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton support for {device.type} tensors"
    return None


def _why_not_cuda(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"runs on CUDA tensors only (got {device.type})"
    if not _native.has_cuda_module():
        return "ia_kernels._cuda is not built"
    return None


_WHY_NOT: dict[str, Callable[[torch.device], str | None]] = {
    "torch": _why_not_torch,
    "cpu": _why_not_cpu,
    "triton": _why_not_triton,
    "cuda": _why_not_cuda,
}

# Automatic choice, fastest first. Triton on CPU (the interpreter) is for tests: never automatic.
_PREFERENCE = {
    "cpu": ("cpu", "torch"),
    "cuda": ("cuda", "triton", "torch"),
}


@dataclass(frozen=True)
class OpBackends:
    """The implementations of one op family, keyed by backend name."""

    op: str
    impls: dict[str, Callable]
    # Per op, the GPU order can differ from the default (e.g. Triton beats the CUDA row pass).
    cuda_preference: tuple[str, ...] = _PREFERENCE["cuda"]

    def names(self) -> list[str]:
        return [name for name in BACKEND_NAMES if name in self.impls]

    def _check(self, name: str, device: torch.device, source: str) -> Callable:
        if name not in BACKEND_NAMES:
            raise ValueError(f"{source}={name!r} is not a backend; known backends: {', '.join(BACKEND_NAMES)}")
        if name not in self.impls:
            raise ValueError(
                f"{self.op} has no {name!r} backend ({source}); it has: {', '.join(self.names())}"
            )
        why = _WHY_NOT[name](device)
        if why is not None:
            raise ValueError(f"{self.op}: backend {name!r} ({source}) cannot run here: {why}; {self.describe(device)}")
        return self.impls[name]

    def describe(self, device: torch.device) -> str:
        parts = []
        for name in self.names():
            why = _WHY_NOT[name](device)
            parts.append(f"{name} (available)" if why is None else f"{name} ({why})")
        return "backends of " + self.op + ": " + ", ".join(parts)

    def select(self, device: torch.device, backend: str | None = None) -> tuple[str, Callable]:
        if backend is not None:
            return backend, self._check(backend, device, "backend")
        env = os.environ.get(ENV_VAR)
        if env:
            if env not in BACKEND_NAMES:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; known backends: {', '.join(BACKEND_NAMES)}")
            if env in self.impls:
                return env, self._check(env, device, ENV_VAR)
        order = self.cuda_preference if device.type == "cuda" else _PREFERENCE.get(device.type, ("torch",))
        for name in order:
            if name in self.impls and _WHY_NOT[name](device) is None:
                return name, self.impls[name]
        return "torch", self.impls["torch"]


_OPS: dict[str, OpBackends] = {}


def register(op: str, impls: dict[str, Callable], cuda_preference: tuple[str, ...] | None = None) -> OpBackends:
    if "torch" not in impls:
        raise ValueError(f"{op}: every op needs a 'torch' backend")
    entry = OpBackends(op, dict(impls), cuda_preference or _PREFERENCE["cuda"])
    _OPS[op] = entry
    return entry


def available_backends(op: str | None = None, device: str | torch.device = "cpu") -> dict:
    """{op: {backend: None if it runs on `device`, else the reason it does not}}."""
    device = torch.device(device)
    ops = [op] if op is not None else sorted(_OPS)
    out = {}
    for name in ops:
        if name not in _OPS:
            raise ValueError(f"unknown op {name!r}; ops: {', '.join(sorted(_OPS))}")
        out[name] = {b: _WHY_NOT[b](device) for b in _OPS[name].names()}
    return out
