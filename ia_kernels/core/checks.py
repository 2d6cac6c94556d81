"""Input validation shared by the op front-ends: every error is a ValueError that names the offending argument."""

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
