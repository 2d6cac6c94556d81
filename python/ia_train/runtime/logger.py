"""Metrics: one JSON object per training step in <out>/metrics.jsonl, mirrored to TensorBoard when
it is installed. On resume, lines past the checkpoint's step are dropped (the killed run may have
logged steps that the resumed run repeats) and the file is rewritten atomically. A line that does
not parse (a run killed mid-write leaves a partial last line) is skipped by the readers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .files import write_text, writing
from ..optional import installed, missing_message


def _rows(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a partial line (the run was killed while writing it)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, out: Path, *, resume_step: int | None, tensorboard: bool):
        self.path = out / "metrics.jsonl"
        if resume_step is None:
            write_text(self.path, "")
        elif self.path.exists():
            kept = [r for r in _rows(self.path.read_text(encoding="utf-8", errors="replace"))
                    if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        with writing(self.path):
            self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            if not installed("tensorboard"):  # optional: the run goes on without it, and says so
                print(f"ia-train: note: {missing_message('tensorboard', 'TensorBoard logging')} "
                      "(or --tensorboard false)", file=sys.stderr, flush=True)
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, row: dict) -> None:
        with writing(self.path):
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        if self._tb is not None:
            self._tb.close()


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return _rows(path.read_text(encoding="utf-8", errors="replace"))
