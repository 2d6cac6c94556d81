"""Shared benchmark machinery: timing, peak memory, environment capture, tables and JSON.

Every suite measures the candidates side by side in one process, so ratios are comparable even on a
noisy machine. Results go to benchmarks/results/local/<suite>-<time>.json (or --json PATH).
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "local"


def _mmap_large_allocations() -> None:
    """Makes glibc serve every allocation >= 128 KiB with mmap and return it on free.

    Without this, glibc raises its mmap threshold up to 32 MiB after the first large free and keeps
    freed buffers resident in the heap, so a later run's peak would hide inside memory that is
    already counted. With a fixed threshold the resident high-water mark measures each call's peak.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (also disables the dynamic threshold)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_mmap_large_allocations()


def _sync(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, device=None) -> dict:
    """Wall-clock times of `fn()` in ms: median, 20th/80th percentiles, min, and the raw samples."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(samples)

    def q(p):
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]

    return {"median_ms": statistics.median(samples), "q20_ms": q(0.2), "q80_ms": q(0.8),
            "min_ms": ordered[0], "samples_ms": samples}


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_memory(fn: Callable[[], object], device=None) -> int | None:
    """Peak memory above what was allocated before the call, in bytes.

    CUDA: torch's allocator peak. CPU (Linux): the process's resident high-water mark, reset through
    /proc/self/clear_refs before the call; None where that is not possible. Large CPU buffers are
    mmap-backed and returned to the OS on free, so the high-water mark tracks the call's own peak.
    """
    gc.collect()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _rss_bytes("VmRSS")
        fn()
        return max(0, _rss_bytes("VmHWM") - base)
    except OSError:
        return None


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(device: str | torch.device = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_sha": _git_sha(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for mod in ("triton", "liger_kernel", "cut_cross_entropy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken peers are recorded as absent
            info[mod] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names and device.type == "cpu":
            info["device"] = names[0]
    except OSError:
        pass
    return info


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def report(suite: str, rows: list[dict], columns: list[str], *, device="cpu", json_path: str | None = None,
           extra: dict | None = None) -> Path:
    """Prints the table and writes {"suite", "env", "rows", ...extra} as JSON; returns the path."""
    print_table(rows, columns)
    payload = {"suite": suite, "env": env_info(device), "rows": rows}
    if extra:
        payload.update(extra)
    if json_path:
        path = Path(json_path)
    else:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {path}")
    return path


def add_common_args(parser, *, dtype: bool = False) -> None:
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    parser.add_argument("--json", default=None, help="where to write the JSON results")
    if dtype:
        parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: fp32 on CPU, bf16 on GPU)")


def input_dtype(args) -> torch.dtype:
    """The --dtype option, defaulting to what users train in: fp32 on CPU, bf16 on GPU."""
    if args.dtype:
        return getattr(torch, args.dtype)
    return torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
