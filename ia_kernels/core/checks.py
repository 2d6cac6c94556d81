"""Input validation shared by the op front-ends: every error is a ValueError that names the offending argument."""

from __future__ import annotations

import math
import numbers
import operator
import sys

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def require_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if is_dtensor(x):
        raise ValueError(f"{name} is a DTensor: ia_kernels takes plain tensors, the same on every rank (only an "
                         f"LM head's weight and bias may be DTensors, placed Shard(0)); pass {name}.full_tensor()")
    return x


def is_dtensor(x) -> bool:
    """Whether x is a torch.distributed DTensor (none can exist before torch.distributed.tensor is imported)."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None)
    return dtensor is not None and isinstance(x, dtensor)


def require_float(name: str, x: torch.Tensor) -> torch.Tensor:
    require_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating-point tensor (float32, bfloat16, float16 or float64), got {x.dtype}")
    return x


def require_int(name: str, x: torch.Tensor) -> torch.Tensor:
    require_tensor(name, x)
    if x.dtype not in INT_DTYPES:
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def require_same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev.type == "meta":
            raise ValueError(f"{name} is a meta tensor (shape only, no data): ia_kernels computes values; "
                             f"pass tensors on a CPU or CUDA device")
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name} is on {dev} but {first_name} is on {first}: move them to one device")
    return first


def require_shape(name: str, x: torch.Tensor, shape: tuple, what: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(x.shape)}")


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def require_index(name: str, value) -> int:
    """An integer setting (a token id, an index, a count): a Python or NumPy int, or a 0-d integer
    tensor; never bool, float or str. It must fit in int64, the type every kernel reads it as."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype in INT_DTYPES \
            and value.device.type != "meta":
        value = int(value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an int, got bool {value}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name}={value} is outside the int64 range [-2**63, 2**63 - 1] that the kernels read")
    return value


def real_number(name: str, value) -> float:
    """A real number: an int, a float, a NumPy real scalar or a one-element real tensor (read with
    one host sync); never bool, str, complex or None. Returned as a Python float; an int too large
    for a float becomes +-inf (callers bound the value and name it)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex() or value.device.type == "meta":
            raise ValueError(f"{name} must be a real number or a one-element real tensor, got a {value.dtype} "
                             f"tensor of shape {tuple(value.shape)}" + (" on meta" if value.device.type == "meta"
                                                                         else ""))
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number (int or float), got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def require_positive_finite(name: str, value) -> float:
    value = real_number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def require_finite_number(name: str, value) -> float:
    value = real_number(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32


def require_float32_range(name: str, value: float, dtype: torch.dtype, *, reciprocal: bool = False,
                          why: str = "") -> float:
    """A setting that a float32 kernel reads (the native kernels take it as a C++ float, where a
    double beyond float's range is undefined behaviour; the PyTorch and Triton paths overflow to inf
    or flush to 0, and the backends then disagree): for a float32 compute dtype, |value| must be
    at most float32's largest value; with `reciprocal` (a value the kernels divide by), it and
    1 / value must both be normal float32 numbers. float64 computes need nothing more."""
    if dtype == torch.float64 or value == 0:
        return value
    magnitude = abs(value)
    lo, hi = (FLOAT32_TINY, 1.0 / FLOAT32_TINY) if reciprocal else (0.0, FLOAT32_MAX)
    if not lo <= magnitude <= hi:
        raise ValueError(f"{name}={value!r} is outside the float32 range the kernels compute in: |{name}| must lie in "
                         f"[{lo:.3g}, {hi:.3g}]{why} (float64 inputs take any finite value)")
    return value


def require_finite(name: str, x: torch.Tensor) -> None:
    """Rejects NaN/inf (costs one host sync: only for small per-sample tensors, never per token)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite: it has NaN or inf (first at index {tuple(bad)})")


def row_pass_args(op: str, z: torch.Tensor, targets: torch.Tensor, temperature: float,
                  ignore_index: int, **per_row: torch.Tensor | None) -> None:
    """The arguments of a native row pass. The registered ops are public (torch.ops.ia_kernels.*) and
    hand raw pointers to native code: everything the kernels assume is checked here, each error
    naming the op and the argument."""
    if not (isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.dim() == 2):
        raise ValueError(f"{op}: z must be a 2-D float32 tensor [rows, V] of logits, got "
                         f"{getattr(z, 'dtype', type(z).__name__)} {tuple(getattr(z, 'shape', ()))}")
    rows, vocab = z.shape
    if z.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: z must be on a CPU or CUDA device, got {z.device}")
    if rows and (z.stride(1) != 1 or z.stride(0) < vocab):
        raise ValueError(f"{op}: z's rows must be contiguous (strides ({vocab} or more, 1)), got {z.stride()}")
    if not (isinstance(targets, torch.Tensor) and targets.dtype == torch.int64 and tuple(targets.shape) == (rows,)):
        raise ValueError(f"{op}: targets must be an int64 tensor of shape ({rows},), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    if not (isinstance(temperature, float) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"{op}: temperature must be a finite float > 0, got {temperature!r}")
    for name, t in {"targets": targets, **per_row}.items():
        if t is None:
            continue
        if name != "targets" and not (t.dtype == torch.float32 and tuple(t.shape) == (rows,)):
            raise ValueError(f"{op}: {name} must be a float32 tensor of shape ({rows},), got {t.dtype} {tuple(t.shape)}")
        if t.device != z.device:
            raise ValueError(f"{op}: {name} is on {t.device} but z is on {z.device}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")
