"""Checkpoints that a crash cannot break.

Layout under <out>/checkpoints/:
    step-000020/      model.pt, optimizer.pt, state.pt (step, data position, scheduler, RNG states)
    latest -> step-000020   a symlink, replaced atomically
A checkpoint is written into `step-N.tmp/`, fsynced, renamed to `step-N/` (atomic within a file
system), and only then does `latest` move to it (a new symlink renamed over the old one, also
atomic). A crash at any point leaves `latest` naming a complete checkpoint; stray `.tmp` folders
are removed by the next save. Older checkpoints beyond `keep` are deleted after `latest` moves.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


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


def save(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stray in root.glob("*.tmp"):
        shutil.rmtree(stray, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # a re-run of the same step (after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = root / "latest.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, root / "latest")
    _fsync_dir(root)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        if old.resolve() != final.resolve():
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(root: Path, model, optimizer, scheduler) -> dict:
    """Restores model, optimiser, scheduler and RNG states; returns the state dict (step, ...)."""
    latest = (root / "latest").resolve()
    model.load_state_dict(torch.load(latest / "model.pt", map_location=next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location="cpu"))
    state = torch.load(latest / "state.pt", weights_only=False)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
