"""Checkpoints that a crash, a full disk or a damaged file cannot turn into a wrong resume.

Layout under <out>/checkpoints/:
    step-000020/      model.pt, optimizer.pt, state.pt (step, data position, scheduler, RNG states),
                      manifest.json (size and sha256 of each of those files, written last)
    latest -> step-000020   a symlink, replaced atomically
A checkpoint is written into `step-N.tmp/`, fsynced, its manifest added, renamed to `step-N/`
(atomic within a file system), and only then does `latest` move to it (a new symlink renamed over
the old one, also atomic). A crash at any point leaves `latest` naming a complete checkpoint; a
failed save (a full disk) removes its `.tmp` folder and raises `RunFileError` naming the file;
stray `.tmp` folders are removed by the next save. Older checkpoints beyond `keep` (at least 2) are
deleted after `latest` moves, so the previous one is always there to fall back to.

Loading verifies the manifest (every file present, of the recorded size and checksum). A damaged
checkpoint is reported in one line and the previous kept one is used instead; when none is
usable, `CheckpointError` says why in one line.

A data-parallel run (distributed.py) writes the model and optimiser state with
torch.distributed.checkpoint instead: `dcp/` holds each rank's shard files and `.metadata`, written
by every rank into the same `step-N.tmp/`; rank 0 then writes state.pt and the manifest (covering
every file, `"format": "dcp"`) and moves the folder and `latest` as above, so the guarantees are the
same (the output directory must be one file system that every rank sees). Either format resumes on
any number of processes: DCP reshards on load, and a single-process checkpoint is split on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .files import RunFileError, reason

MANIFEST = "manifest.json"
FILES = ("model.pt", "optimizer.pt", "state.pt")
DCP_DIR = "dcp"
REQUIRED = {"torch": FILES, "dcp": ("state.pt", f"{DCP_DIR}/.metadata")}  # manifest "format" -> files it must list


class CheckpointError(Exception):
    """No usable checkpoint; the message is one line that says which were tried and why each failed."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_dirs(root: Path) -> list[Path]:
    """The candidates to resume from, newest first: `latest`'s target, then every other step-N."""
    steps = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")),
                   key=lambda p: p.name, reverse=True)
    latest = root / "latest"
    first = [root / os.readlink(latest)] if latest.is_symlink() else []
    return first + [p for p in steps if not first or p.name != first[0].name]


def _begin(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stray in root.glob("*.tmp"):
        shutil.rmtree(stray, ignore_errors=True)
    tmp.mkdir()


def _record(path: Path) -> dict:
    """fsyncs `path`; its manifest entry (size, sha256)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _commit(root: Path, tmp: Path, final: Path, manifest: dict) -> Path:
    """Manifest last, then tmp -> final and `latest` -> final, each atomic; returns the path being
    written when it fails (through the exception's `.path`)."""
    current = tmp / MANIFEST
    try:
        with open(tmp / (MANIFEST + ".tmp"), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp / (MANIFEST + ".tmp"), current)
        _fsync_dir(tmp)
        current = final
        if final.exists():  # a re-run of the same step (after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        current = root / "latest"
        link_tmp = root / "latest.tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(final.name, link_tmp)
        os.replace(link_tmp, root / "latest")
        _fsync_dir(root)
    except (OSError, RuntimeError) as e:
        e.path = current
        raise
    return final


def _failed(root: Path, tmp: Path, current: Path, e: BaseException) -> RunFileError:
    why = reason(e, current)  # before the partial checkpoint is removed (it shows the disk full)
    shutil.rmtree(tmp, ignore_errors=True)
    kept, _ = usable(root) if root.is_dir() else (None, [])
    hint = (f"; the last good checkpoint ({kept.name}) is intact: make room and continue with --resume"
            if kept is not None else "; no usable checkpoint was written before")
    return RunFileError(f"cannot write {current}: {why}{hint}")


def _prune(root: Path, final: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        if old.resolve() != final.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _state(step: int, scheduler, extra: dict) -> dict:
    return {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}


def save(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2, dist=None) -> Path:
    """Writes checkpoint step-N (see the module doc). With `dist` (a distributed.Dist of a launched
    run), every rank must call it: the sharded format."""
    if dist is not None and dist.enabled:
        return _save_sharded(root, step, model, optimizer, scheduler, extra, keep, dist)
    keep = max(2, keep)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    current = root
    try:
        _begin(root, tmp)
        objects = {"model.pt": model.state_dict(), "optimizer.pt": optimizer.state_dict(),
                   "state.pt": _state(step, scheduler, extra)}
        files = {}
        for name, obj in objects.items():
            current = tmp / name
            torch.save(obj, current)
            files[name] = _record(current)
        _commit(root, tmp, final, {"step": step, "files": files})
    except (OSError, RuntimeError) as e:  # RuntimeError: torch.save's writer on a full disk
        raise _failed(root, tmp, getattr(e, "path", current), e) from None
    _prune(root, final, keep)
    return final


def _save_sharded(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int, dist) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from . import distributed

    keep = max(2, keep)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    error = None
    current = root
    if dist.main:
        try:
            _begin(root, tmp)
        except OSError as e:
            error = str(_failed(root, tmp, current, e))
    error = distributed.broadcast(error, dist)
    if error is not None:
        raise RunFileError(error)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
        error = None
    except Exception as e:  # noqa: BLE001 - DCP wraps each rank's failure in its own exception type
        error = f"cannot write {tmp / DCP_DIR}: {reason(e, tmp / DCP_DIR)}"
    errors = [e for e in distributed.gather_lists([error], dist) if e is not None]
    if not errors and dist.main:
        current = tmp / "state.pt"
        try:
            torch.save(_state(step, scheduler, extra), current)
            files = {"state.pt": _record(current)}
            for path in sorted((tmp / DCP_DIR).iterdir()):
                current = path
                files[f"{DCP_DIR}/{path.name}"] = _record(path)
            _commit(root, tmp, final, {"step": step, "format": "dcp", "world_size": dist.world_size, "files": files})
            _prune(root, final, keep)
        except (OSError, RuntimeError) as e:
            errors = [str(_failed(root, tmp, getattr(e, "path", current), e))]
    elif errors and dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
    errors = distributed.broadcast(errors, dist)
    if errors:
        raise RunFileError(errors[0])
    return final


_VERIFIED: dict[tuple, str | None] = {}  # (folder, file stats) -> problem, so a check is not repeated


def problem(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be used (one phrase), or None when it verifies."""
    if not folder.is_dir():
        return "its folder is missing"
    manifest_file = folder / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
        int(manifest["step"])
    except FileNotFoundError:
        return f"no {MANIFEST} (an unfinished or damaged checkpoint)"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    stats = []
    for name in REQUIRED.get(manifest.get("format", "torch"), FILES):
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name in sorted(files):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        st = path.stat()
        if st.st_size != files[name].get("size"):
            return f"{name} has {st.st_size} bytes, its manifest says {files[name].get('size')} (truncated or replaced)"
        stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    key = (str(folder.resolve()), tuple(stats), manifest_file.stat().st_mtime_ns)
    if key not in _VERIFIED:
        bad = next((name for name in sorted(files) if _sha256(folder / name) != files[name].get("sha256")), None)
        _VERIFIED[key] = None if bad is None else f"{bad} does not match its checksum (the file changed after it was written)"
    return _VERIFIED[key]


def usable(root: Path) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint that verifies or None, one 'step-N: why' per damaged newer one)."""
    damaged = []
    for folder in checkpoint_dirs(root):
        why = problem(folder)
        if why is None:
            return folder, damaged
        damaged.append(f"{folder.name}: {why}")
    return None, damaged


def step_of(folder: Path) -> int:
    return int(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["step"])


def manifest_format(folder: Path) -> str:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format", "torch")


def load(root: Path, model, optimizer, scheduler, warn=None, dist=None) -> dict:
    """Restores model, optimiser, scheduler and RNG states from the newest checkpoint that verifies;
    returns its state dict (step, ...) with "checkpoint" (the folder) added. Each damaged newer
    checkpoint is reported in one line through `warn` (default: stderr). Either format loads into a
    plain model or, with `dist` (every rank calling), into an FSDP-sharded one."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    sharded = dist is not None and dist.enabled
    damaged = []
    for folder in checkpoint_dirs(root):
        why = problem(folder)
        if why is None:
            try:
                fmt = manifest_format(folder)
                state = torch.load(folder / "state.pt", weights_only=False)
                if fmt == "torch":
                    weights = torch.load(folder / "model.pt", map_location="cpu" if sharded else _device_of(model))
                    opt_state = torch.load(folder / "optimizer.pt", map_location="cpu")
            except Exception as e:  # noqa: BLE001 - verified but unreadable: treat as damaged
                why = f"unreadable ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
        if why is not None:
            damaged.append(f"{folder.name}: {why}")
            warn(f"ia-train: checkpoint {folder} is damaged: {why}; trying the previous one")
            continue
        try:
            if fmt == "dcp":
                _load_dcp(folder / DCP_DIR, model, optimizer)
            elif sharded:
                _load_full_into_sharded(weights, opt_state, model, optimizer)
            else:
                model.load_state_dict(weights)
                optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {folder} does not fit this model and optimiser "
                                  f"({str(e).strip().splitlines()[0][:160]})") from None
        set_rng_state(state["rng"])
        if damaged:
            warn(f"ia-train: resuming from {folder.name} (step {state['step']}) instead")
        state["checkpoint"] = str(folder)
        return state
    raise CheckpointError(f"no usable checkpoint in {root}" + (f" ({'; '.join(damaged)})" if damaged else "")
                          + "; drop --resume to start the run over")


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _load_dcp(path: Path, model, optimizer) -> None:
    """DCP reshards: the files of W ranks load into this process's shards (or the whole tensors of a
    plain model, without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _load_full_into_sharded(weights: dict, opt_state: dict, model, optimizer) -> None:
    """A single-process checkpoint (whole tensors; optimiser state keyed by parameter index) into
    an FSDP-sharded model and its optimiser: every rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [name for name, _ in model.named_parameters()]
    by_index = lambda i: names[i]  # noqa: E731 - optimizer.state_dict() numbers parameters in this order
    optim = {"state": {by_index(i): value for i, value in opt_state["state"].items()},
             "param_groups": [{**group, "params": [by_index(i) for i in group["params"]]}
                              for group in opt_state["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True))


__all__ = ["CheckpointError", "RunFileError", "load", "save", "usable", "problem", "step_of"]
