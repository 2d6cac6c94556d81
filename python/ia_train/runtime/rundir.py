"""A run's output directory: the files a training run writes there, the id that ties them (and every
checkpoint) to that run, and clearing them when a new run is told to take the directory over."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

# what `ia-train` writes into --out (anything else there is left alone)
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "summary.json", "eval_before.json", "samples_before.json",
             "samples_after.json", "training_curves.png", "before_after.png", "tensorboard")


def run_files(out: Path) -> list[str]:
    """The run files present in `out` (symbolic links included: they are the run's too)."""
    return [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]


def new_run_id() -> str:
    return uuid.uuid4().hex


def saved_run_id(out: Path) -> str | None:
    """The run id in `out`/config.json; None when there is none (a run from before runs were named, or
    an unreadable file: the checks that read config.json report that)."""
    try:
        value = json.loads((out / "config.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def clear(out: Path) -> None:
    """Deletes the run files in `out` (files, links and folders), nothing else."""
    for name in run_files(out):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
