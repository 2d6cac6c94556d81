"""Running the study's grid: each run an ordinary ia-train in its own process and directory, a few at a
time; a finished run (summary.json with the same settings) is kept, and an unfinished one with a
checkpoint and the same settings continues from it (`ia-train --resume`), so a stopped study loses
at most the steps since each running run's last checkpoint (grid.CHECKPOINT_EVERY).

Ctrl-C or SIGTERM stops the study promptly: no queued run starts, every running one gets SIGTERM (and
SIGKILL after a grace period) and is continued by the next `ia-train study` (from its last
checkpoint, or from the start when it has none). The runs are in sessions of their own, so a
terminal's Ctrl-C reaches the study alone and the study stops them in order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .grid import RunSpec, flags


def _same_settings(saved: dict, spec: RunSpec) -> bool:
    return all(saved.get(key) == value for key, value in spec.settings)


def resumable(run_dir: Path, spec: RunSpec) -> bool:
    """Whether the directory holds an unfinished run of exactly these settings with a checkpoint."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and _same_settings(saved, spec) and (run_dir / "checkpoints" / "latest").exists()


def finished_summary(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's summary.json when it finished with exactly these settings, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    saved = summary.get("config", {}) if isinstance(summary, dict) else {}
    if not _same_settings(saved, spec) or "after" not in summary:
        return None
    return summary


class Processes:
    """The runs' processes: started unless the study is stopping, all stopped by stop()."""

    GRACE_SECONDS = 10.0

    def __init__(self):
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()

    def run(self, cmd: list[str], log) -> int | None:
        """The command's exit status; None when the study stopped before or while it ran."""
        with self._lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self._running.add(proc)
        try:
            rc = proc.wait()
        finally:
            with self._lock:
                self._running.discard(proc)
        return None if self.stopping.is_set() else rc

    def stop(self) -> None:
        """No new run starts; the running ones get SIGTERM, then SIGKILL after GRACE_SECONDS."""
        with self._lock:
            self.stopping.set()
            running = list(self._running)
        for proc in running:
            _signal_group(proc, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=self.GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the run and anything it started (its own session)
    except ProcessLookupError:
        pass


def run_one(spec: RunSpec, runs_dir: Path, threads: int, extra: list[str],
            processes: Processes | None = None) -> tuple[RunSpec, dict | None, str]:
    """(spec, its summary or None, the log's tail when it failed, 'stopped', 'kept' for a run an earlier
    study finished, else ''). A directory left by
    an interrupted run of the study continues from its last checkpoint (same settings), else starts
    over."""
    processes = processes or Processes()
    run_dir = runs_dir / spec.name
    done = finished_summary(run_dir, spec)
    if done is not None:
        return spec, done, "kept"  # finished by an earlier study: nothing new to report
    if processes.stopping.is_set():  # leave the directory as it is: the next study continues it
        return spec, None, "stopped"
    resume = resumable(run_dir, spec)
    if not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ia_train", "--out", str(run_dir), "--threads", str(threads),
           *flags(spec.config), *extra, *(["--resume"] if resume else [])]
    with open(run_dir / "log.txt", "a" if resume else "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = processes.run(cmd, log)
    if rc is None:
        return spec, None, "stopped"
    summary = finished_summary(run_dir, spec)
    if rc != 0 or summary is None:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        return spec, None, f"exit status {rc}: " + " | ".join(tail)
    return spec, summary, ""


def run_grid(specs: list[RunSpec], runs_dir: Path, jobs: int, threads: int, extra: list[str],
             say=print, on_finished=None) -> tuple[dict, dict]:
    """Runs every spec (jobs at a time); ({name: summary}, {name: why it failed}). on_finished(summaries,
    failures), when given, is called after each run this call ran ends (finished or failed, in the
    study's thread; not for runs an earlier study finished), so that a long study can keep its report
    current. Interrupted (KeyboardInterrupt, or SIGTERM through
    runtime.signals), it stops every run before re-raising."""
    from tqdm.auto import tqdm

    summaries, failures = {}, {}
    processes = Processes()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        with tqdm(total=len(specs), desc="study", unit="run") as bar:
            futures = [pool.submit(run_one, spec, runs_dir, threads, extra, processes) for spec in specs]
            _collect(futures, summaries, failures, runs_dir, bar, say, on_finished)
    except BaseException:
        processes.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return summaries, failures


def _collect(futures, summaries: dict, failures: dict, runs_dir: Path, bar, say, on_finished=None) -> None:
    """Each run's result as it finishes: its summary, or why it failed (said at once)."""
    for future in as_completed(futures):
        spec, summary, why = future.result()
        if summary is None:
            failures[spec.name] = why
            say(f"ia-train study: run {spec.name} failed ({why}); log: {runs_dir / spec.name / 'log.txt'}")
        else:
            summaries[spec.name] = summary
            a, c = summary["after"], summary["change"]
            bar.write(f"{spec.name:<40} pass@1 {a['pass@1']:.3f} ({c['pass@1']:+.3f})  "
                      f"mean tokens {a['mean_tokens']:.1f} ({c['mean_tokens']:+.1f})  "
                      f"{summary['wall_seconds']:.0f}s")
        bar.update(1)
        if on_finished is not None and why not in ("stopped", "kept"):
            on_finished(summaries, failures)
