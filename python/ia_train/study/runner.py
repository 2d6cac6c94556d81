"""Running the study's grid: each run an ordinary ia-train in its own process and directory, a few at a
time; a finished run (summary.json with the same settings) is kept, so a stopped study continues."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .grid import RunSpec, flags


def finished_summary(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's summary.json when it finished with exactly these settings, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    saved = summary.get("config", {}) if isinstance(summary, dict) else {}
    if any(saved.get(key) != value for key, value in spec.settings) or "after" not in summary:
        return None
    return summary


def run_one(spec: RunSpec, runs_dir: Path, threads: int, extra: list[str]) -> tuple[RunSpec, dict | None, str]:
    """(spec, its summary or None, the log's tail when it failed). A directory left by an
    interrupted run of the study is started over."""
    run_dir = runs_dir / spec.name
    done = finished_summary(run_dir, spec)
    if done is not None:
        return spec, done, ""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ia_train", "--out", str(run_dir), "--threads", str(threads),
           *flags(spec.config), *extra]
    with open(run_dir / "log.txt", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = finished_summary(run_dir, spec)
    if rc != 0 or summary is None:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        return spec, None, f"exit status {rc}: " + " | ".join(tail)
    return spec, summary, ""


def run_grid(specs: list[RunSpec], runs_dir: Path, jobs: int, threads: int, extra: list[str],
             say=print) -> tuple[dict, dict]:
    """Runs every spec (jobs at a time); ({name: summary}, {name: why it failed})."""
    from tqdm.auto import tqdm

    summaries, failures = {}, {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(specs), desc="study", unit="run") as bar:
        futures = [pool.submit(run_one, spec, runs_dir, threads, extra) for spec in specs]
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
    return summaries, failures
