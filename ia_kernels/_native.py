"""Loading the compiled modules, and turning tensors into the raw arguments they take.

The native modules are optional at import time: a missing build is reported when a native backend
is first asked for, with the command that fixes it. ia_kernels._C and ia_kernels._cuda bind their
launchers with the same keyword arguments, so the cpu and cuda backends build them with the same
functions, here (the backends of the grid never import one another).
"""

from __future__ import annotations

import importlib

import torch

from .core.numerics import ESTIMATOR_CODES, PASSK_VARIANT_CODES, compute_dtype

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


# --------------------------------------------------------------------------- launcher arguments


def logprob_forward_args(z, targets, temperature, ignore_index, logp, lse, entropy) -> dict:
    """The native forward row pass's keyword arguments."""
    return dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                logp=logp.data_ptr(), lse=lse.data_ptr(), entropy=entropy.data_ptr())


def logprob_backward_args(z, targets, temperature, ignore_index, lse, entropy, g_logp, g_entropy) -> dict:
    """The native backward row pass's keyword arguments."""
    return dict(logits=z.data_ptr(), row_stride=z.stride(0), n_rows=z.shape[0], V=z.shape[1],
                targets=targets.data_ptr(), temperature=float(temperature), ignore_index=int(ignore_index),
                lse=lse.data_ptr(), entropy=entropy.data_ptr(), g_logp=g_logp.data_ptr(),
                g_entropy=ptr(g_entropy))


def advantage_args(rewards, answers, layout, estimator, variant):
    """(rewards, answers, out, the keyword arguments of the native group_advantages): rewards in
    their compute dtype (half types widened once, exactly), answers as int64, both contiguous;
    layout a core.groups.GroupLayout."""
    r = rewards.to(compute_dtype(rewards.dtype)).contiguous()
    ans = None if answers is None else answers.to(torch.int64).contiguous()
    out = torch.empty_like(r)
    args = dict(estimator=ESTIMATOR_CODES[estimator], variant=PASSK_VARIANT_CODES[variant],
                is_double=r.dtype == torch.float64, rewards=r.data_ptr(), answers=ptr(ans),
                out=out.data_ptr(), n_groups=layout.n_groups, group_size=layout.group_size,
                offsets=ptr(layout.offsets), order=ptr(layout.order))
    return r, ans, out, args


def length_penalty_args(correct, lengths, layout, dtype):
    """(correct, out, the keyword arguments of the native length_penalized_rewards)."""
    out = torch.empty(lengths.shape, dtype=dtype, device=lengths.device)
    c = correct.contiguous()
    return c, out, dict(correct=c.data_ptr(), lengths=lengths.data_ptr(), out=out.data_ptr(),
                        is_double=dtype == torch.float64, n_groups=layout.n_groups, group_size=layout.group_size,
                        offsets=ptr(layout.offsets), order=ptr(layout.order))
