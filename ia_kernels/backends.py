"""Backend registry and selection: the one place that says which backend can serve which call.

Every op family registers, per backend, the module that implements it (ia_kernels/kernels/<backend>/
<op>.py, imported on first use) and the compute dtypes it serves (`Impl`). What a backend needs
of the device is declared once, below (`_WHY_NOT`), and which (op, backend, device) have passed
their tests in `VERIFIED`. Nothing reaches a backend module except through here: the front-ends
select one (`OpBackends.select`), or ask for the module a backend registered for another op
(`kernel_module`); `ops` and `op_backends` list what is registered.

Selection: the call's `backend=` argument, else the `IA_KERNELS_BACKEND` environment variable
(applied to the ops that implement the backend it names), else the fastest backend that can run on
the tensors' device, serves the call's compute dtype, *and has been verified there* ("torch" is
always eligible). A backend asked for by name that lacks the op, cannot run here, or cannot serve
the dtype raises a ValueError that says why and names the alternatives: it is never silently
replaced. An unverified backend still runs when asked for by name.
"""

from __future__ import annotations

import importlib
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

# (op, backend, device type) whose tests have passed on that device type. backend=None only picks a
# backend listed here (or "torch", the plain-PyTorch path every op has); an unlisted one runs only
# when asked for (backend= or IA_KERNELS_BACKEND). The CPU entries are checked by the test suite on
# every run. No GPU has run the "cuda" or "triton" backends yet, so CUDA tensors default to "torch".
# To add a CUDA entry: run benchmarks/gpu_check.sh on a GPU machine; once its GPU tests and the
# whole suite pass, add ("<op>", "<backend>", "cuda") for each op whose backend those tests cover.
VERIFIED: frozenset[tuple[str, str, str]] = frozenset({
    ("group_advantages", "cpu", "cpu"),
    ("length_penalized_rewards", "cpu", "cpu"),
    ("linear_logprobs", "cpu", "cpu"),
    ("linear_ppo_loss", "cpu", "cpu"),
    ("ppo_loss", "cpu", "cpu"),
    ("paged_attention", "cpu", "cpu"),
})


def is_verified(op: str, backend: str, device_type: str) -> bool:
    """Whether backend=None may choose `backend` for `op` on `device_type` tensors."""
    return backend == "torch" or (op, backend, device_type) in VERIFIED


def _why_not_automatic(entry: "OpBackends", backend: str, device: torch.device) -> str | None:
    if backend not in entry.order(device):
        why = "the Triton interpreter is for tests" if backend == "triton" else "not in the automatic order"
        return f"not chosen automatically on {device.type} tensors: {why} (pass backend={backend!r} to run it)"
    if is_verified(entry.op, backend, device.type):
        return None
    return (f"not chosen automatically: not yet verified on {device.type} "
            f"(pass backend={backend!r} to run it)")


# Automatic choice, fastest first, among the verified ones. Triton on CPU (the interpreter) is for
# tests: never automatic.
_PREFERENCE = {
    "cpu": ("cpu", "torch"),
    "cuda": ("cuda", "triton", "torch"),
}


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op: the module (imported on first use, so that an
    optional dependency such as triton is only needed when its backend runs) and the compute
    dtypes it serves (ia_kernels.core.numerics.compute_dtype of the inputs)."""

    module: str
    dtypes: tuple[torch.dtype, ...]

    def load(self):
        return importlib.import_module(self.module)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class OpBackends:
    """The implementations of one op family, keyed by backend name."""

    op: str
    impls: dict[str, Impl]
    # Per op, the GPU order can differ from the default (e.g. Triton beats the CUDA row pass).
    cuda_preference: tuple[str, ...] = _PREFERENCE["cuda"]

    def names(self) -> list[str]:
        return [name for name in BACKEND_NAMES if name in self.impls]

    def _check(self, name: str, device: torch.device, dtype: torch.dtype | None, source: str):
        if name not in BACKEND_NAMES:
            raise ValueError(f"{source}={name!r} is not a backend; known backends: {', '.join(BACKEND_NAMES)}")
        if name not in self.impls:
            raise ValueError(
                f"{self.op} has no {name!r} backend ({source}); it has: {', '.join(self.names())}"
            )
        why = _WHY_NOT[name](device)
        if why is not None:
            raise ValueError(f"{self.op}: backend {name!r} ({source}) cannot run here: {why}; {self.describe(device)}")
        impl = self.impls[name]
        if dtype is not None and dtype not in impl.dtypes:
            serves = [b for b in self.names() if dtype in self.impls[b].dtypes]
            raise ValueError(
                f"{self.op}: backend {name!r} ({source}) computes in {', '.join(map(_dtype_name, impl.dtypes))} "
                f"only, not {_dtype_name(dtype)}; for {_dtype_name(dtype)} inputs use backend="
                f"{' or '.join(repr(b) for b in serves)} or backend=None")
        return impl.load()

    def describe(self, device: torch.device) -> str:
        parts = []
        for name in self.names():
            why = _WHY_NOT[name](device)
            if why is None:
                not_automatic = _why_not_automatic(self, name, device)
                why = None if not_automatic is None else "available, " + not_automatic
            parts.append(f"{name} (available)" if why is None else f"{name} ({why})")
        return "backends of " + self.op + ": " + ", ".join(parts)

    def order(self, device: torch.device) -> tuple[str, ...]:
        """The automatic choice's candidates on `device`, fastest first (before verification)."""
        return self.cuda_preference if device.type == "cuda" else _PREFERENCE.get(device.type, ("torch",))

    def select(self, device: torch.device, dtype: torch.dtype | None = None,
               backend: str | None = None) -> tuple[str, object]:
        """(name, module) of the backend that serves a call on `device` computing in `dtype`."""
        if backend is not None:
            return backend, self._check(backend, device, dtype, "backend")
        env = os.environ.get(ENV_VAR)
        if env:
            if env not in BACKEND_NAMES:
                raise ValueError(f"{ENV_VAR}={env!r} is not a backend; known backends: {', '.join(BACKEND_NAMES)}")
            if env in self.impls:
                return env, self._check(env, device, dtype, ENV_VAR)
        for name in self.order(device):
            impl = self.impls.get(name)
            if (impl is not None and (dtype is None or dtype in impl.dtypes) and _WHY_NOT[name](device) is None
                    and is_verified(self.op, name, device.type)):
                return name, impl.load()
        return "torch", self.impls["torch"].load()


_OPS: dict[str, OpBackends] = {}


def register(op: str, impls: dict[str, Impl], cuda_preference: tuple[str, ...] | None = None) -> OpBackends:
    if "torch" not in impls:
        raise ValueError(f"{op}: every op needs a 'torch' backend")
    if not all(isinstance(i, Impl) for i in impls.values()):
        raise TypeError(f"{op}: register each backend as an Impl(module, dtypes)")
    entry = OpBackends(op, dict(impls), cuda_preference or _PREFERENCE["cuda"])
    _OPS[op] = entry
    return entry


def ops() -> list[str]:
    """The registered ops, sorted (each front-end in ia_kernels/ops/ registers its own on import)."""
    return sorted(_OPS)


def op_backends(op: str) -> OpBackends:
    """The registry entry of `op`: its backends, their modules and dtypes, its selection."""
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(sorted(_OPS))}")
    return _OPS[op]


def kernel_module(op: str, backend: str):
    """The module that `backend` registered for `op` (kernels/<backend>/<family>.py), imported.

    For a front-end that runs another op's kernels on the backend it selected for itself
    (linear_ppo_loss runs linear_logprobs's row passes), and for loading the modules that register
    torch custom-op kernels. No device or dtype check: the caller's own selection made those.
    """
    entry = op_backends(op)
    if backend not in entry.impls:
        raise ValueError(f"{op} has no {backend!r} backend; it has: {', '.join(entry.names())}")
    return entry.impls[backend].load()


def available_backends(op: str | None = None, device: str | torch.device = "cpu") -> dict:
    """{op: {backend: None if it runs on `device` and backend=None may choose it, else the reason}}.

    The reason is why the backend cannot run on `device` (e.g. "runs on CUDA tensors only"), or,
    for one that can run there but that backend=None never picks, a string starting "not chosen
    automatically" (e.g. "not chosen automatically: not yet verified on cuda (pass backend='cuda'
    to run it)": its tests have not passed on that device type, see VERIFIED). Such a backend
    still runs when asked for with backend= or IA_KERNELS_BACKEND.
    """
    device = torch.device(device)
    out = {}
    for name in ([op] if op is not None else ops()):
        entry = op_backends(name)
        out[name] = {b: _WHY_NOT[b](device) or _why_not_automatic(entry, b, device) for b in entry.names()}
    return out
