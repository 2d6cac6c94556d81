"""The phase split of a training step: seconds per phase (generation, rewards, old_logp, ref_logp,
loss, optimizer), reported in the step's metrics row as time_<phase> (what the loop benchmark reads)."""

from __future__ import annotations

import time
from contextlib import contextmanager

PHASES = ("generation", "rewards", "old_logp", "ref_logp", "loss", "optimizer")


class PhaseClock:
    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        """`with clock("loss"):` adds the block's wall time to that phase."""
        if phase not in self.seconds:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def row(self) -> dict[str, float]:
        return {f"time_{phase}": seconds for phase, seconds in self.seconds.items()}
