"""From what the launcher reported to a status and a reason. Everything a program can cause is a
status with a reason (reward 0 unless "passed"); only a sandbox that failed before the program
started is "error"."""

from __future__ import annotations

import hmac
import json
import signal

from .launcher import Report
from .limits import SandboxLimits


def parse_reports(raw: bytes) -> dict:
    """The launcher's JSON lines, merged; the first value of each key wins; anything else is ignored."""
    merged: dict = {}
    for line in raw.split(b"\n"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k, v in obj.items():
                merged.setdefault(k, v)
    return merged


def read_verdict(proof, nonce: str):
    """(ok, reason) from the harness's proof, or None when it does not carry the nonce."""
    if not isinstance(proof, str):
        return None
    for line in proof.splitlines():
        head, _, rest = line.partition(" ")
        if len(head) == len(nonce) and hmac.compare_digest(head, nonce):
            try:
                verdict = json.loads(rest)
                return verdict["ok"] is True, str(verdict["reason"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def check_proof(proof, nonce: str) -> tuple[str, str]:
    verdict = read_verdict(proof, nonce)
    if verdict is None:
        return "failed", "exited cleanly without the harness's proof that the tests ran to their end"
    if not verdict[0]:
        return "failed", verdict[1]
    return "passed", "all tests passed (proof of completion)"


def _memory_limit(limits: SandboxLimits) -> int:
    return limits.total_memory_bytes or limits.memory_bytes


def classify(report: dict, timed_out: bool, stderr: str, out_size: int, limits: SandboxLimits,
             oom: bool) -> tuple[str, str]:
    """(status, reason) of a run from the launcher's merged reports."""
    code = report.get(Report.RETURNCODE)
    code = code if type(code) is int else None
    if timed_out:
        return "timeout", f"wall time limit {limits.wall_seconds:g} s exceeded"
    if Report.ERROR in report:  # the sandbox itself failed (e.g. the interpreter could not be executed)
        return "error", str(report[Report.ERROR])[:500]
    if Report.REJECTED in report:  # the program itself does not fit the run (nothing of it ran)
        return "failed", str(report[Report.REJECTED])[:500]
    if code is None and oom:  # the OOM killer took the launcher or init: the program's doing
        return "memory", f"memory limit {_memory_limit(limits)} bytes of the run exceeded"
    if code is None:
        if report.get(Report.STARTED) is True:
            # The program ran: whatever ended the launcher or init after that (a signal the program
            # found a way to send, a limit) is a failed run, never the trainer's problem.
            lost = report.get(Report.LOST)
            detail = str(lost)[:300] if isinstance(lost, str) else "its launcher or init died"
            return "failed", f"no exit status: the sandbox lost the program after it started ({detail})"
        return "error", "the launcher died before the program started"
    cpu = report.get(Report.CPU_SECONDS, 0.0)
    cpu = cpu if type(cpu) in (int, float) else 0.0
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= 0.9 * limits.cpu_seconds):
        return "timeout", f"CPU time limit {limits.cpu_seconds} s exceeded (signal {-code})"
    if out_size >= limits.file_bytes or code == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit", f"output or file size limit {limits.file_bytes} bytes exceeded"
    if oom:
        return "memory", f"memory limit {_memory_limit(limits)} bytes of the run exceeded"
    if code == 0:
        return "passed", "exit code 0"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory", f"memory limit {limits.memory_bytes} bytes exceeded"
    if code < 0:
        try:
            return "failed", f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return "failed", f"killed by signal {-code}"
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return "failed", f"exit code {code}: {last[:200]}"


def tests_verdict(status: str, reason: str, proof, nonce: str, limits: SandboxLimits) -> tuple[str, str]:
    """run_tests: "passed" only with the harness's proof; a failed run takes the harness's reason."""
    if status == "passed":
        return check_proof(proof, nonce)
    if status == "failed":
        verdict = read_verdict(proof, nonce)
        if verdict is not None and not verdict[0]:
            reason = verdict[1]
            if "MemoryError" in reason:
                return "memory", f"memory limit exceeded ({reason[:200]})"
            if "SIGXCPU" in reason:
                return "timeout", f"CPU time limit {limits.cpu_seconds} s exceeded ({reason[:200]})"
            if "SIGXFSZ" in reason:
                return "output_limit", f"output or file size limit {limits.file_bytes} bytes exceeded"
    return status, reason
