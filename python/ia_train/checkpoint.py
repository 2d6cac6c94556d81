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
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .files import RunFileError, reason

MANIFEST = "manifest.json"
FILES = ("model.pt", "optimizer.pt", "state.pt")


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


def save(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2) -> Path:
    keep = max(2, keep)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    current = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stray in root.glob("*.tmp"):
            shutil.rmtree(stray, ignore_errors=True)
        current = tmp
        tmp.mkdir()
        objects = {"model.pt": model.state_dict(), "optimizer.pt": optimizer.state_dict(),
                   "state.pt": {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}}
        files = {}
        for name, obj in objects.items():
            current = tmp / name
            torch.save(obj, current)
            with open(current, "rb") as fh:
                os.fsync(fh.fileno())
            files[name] = {"size": current.stat().st_size, "sha256": _sha256(current)}
        current = tmp / MANIFEST
        with open(tmp / (MANIFEST + ".tmp"), "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "files": files}, indent=1))
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
    except (OSError, RuntimeError) as e:  # RuntimeError: torch.save's writer on a full disk
        why = reason(e, current)  # before the partial checkpoint is removed (it shows the disk full)
        shutil.rmtree(tmp, ignore_errors=True)
        kept, _ = usable(root) if root.is_dir() else (None, [])
        hint = (f"; the last good checkpoint ({kept.name}) is intact: make room and continue with --resume"
                if kept is not None else "; no usable checkpoint was written before")
        raise RunFileError(f"cannot write {current}: {why}{hint}") from None
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        if old.resolve() != final.resolve():
            shutil.rmtree(old, ignore_errors=True)
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
    for name in FILES:
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


def load(root: Path, model, optimizer, scheduler, warn=None) -> dict:
    """Restores model, optimiser, scheduler and RNG states from the newest checkpoint that verifies;
    returns its state dict (step, ...) with "checkpoint" (the folder) added. Each damaged newer
    checkpoint is reported in one line through `warn` (default: stderr)."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    damaged = []
    for folder in checkpoint_dirs(root):
        why = problem(folder)
        if why is None:
            try:
                weights = torch.load(folder / "model.pt", map_location=next(model.parameters()).device)
                opt_state = torch.load(folder / "optimizer.pt", map_location="cpu")
                state = torch.load(folder / "state.pt", weights_only=False)
            except Exception as e:  # noqa: BLE001 - verified but unreadable: treat as damaged
                why = f"unreadable ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
        if why is not None:
            damaged.append(f"{folder.name}: {why}")
            warn(f"ia-train: checkpoint {folder} is damaged: {why}; trying the previous one")
            continue
        try:
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


__all__ = ["CheckpointError", "RunFileError", "load", "save", "usable", "problem", "step_of"]
