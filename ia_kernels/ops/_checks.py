"""Input validation shared by the op families: every error names the offending argument."""

from __future__ import annotations

import math
import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def require_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


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


def require_index(name: str, value) -> int:
    """An integer setting (a token id, an index): Python or NumPy ints, never bool, float or str."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype in INT_DTYPES:
        value = int(value)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got bool {value}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def require_positive_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def require_finite(name: str, x: torch.Tensor) -> None:
    """Rejects NaN/inf (costs one host sync: only for small per-sample tensors, never per token)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite: it has NaN or inf (first at index {tuple(bad)})")
