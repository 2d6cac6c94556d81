"""What a run may use (SandboxLimits), what it gave (SandboxResult), and the one exception that
means the sandbox itself cannot run programs here (SandboxUnavailable)."""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "error")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run programs on this machine: the isolation the limits require is not
    allowed here, or its self-test failed. Nothing untrusted was run."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # RLIMIT_AS of each process (address space, not resident memory)
    total_memory_bytes: int | None = None  # the whole run's memory (cgroup); None: memory_bytes
    max_processes: int = 16  # the whole run's processes (cgroup pids.max and RLIMIT_NPROC)
    cpu_cores: float = 1.0  # CPU bandwidth of the whole run (cgroup cpu.max)
    file_bytes: int = 8 << 20  # RLIMIT_FSIZE: any one file, stdout and stderr included
    disk_bytes: int = 64 << 20  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run)
    disk_inodes: int = 4096  # inodes of each private tmpfs
    open_files: int = 64
    output_chars: int = 8192  # characters of stdout/stderr kept in the result
    network: bool = False  # True leaves the network namespace alone
    require_isolation: bool = True  # refuse to run without full isolation (see docs/sandbox.md)


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    reason: str  # human-readable cause ("exit code 1: AssertionError", "wall time limit 2.0 s", ...)
    returncode: int | None  # negative: killed by that signal
    stdout: str  # truncated to limits.output_chars
    stderr: str
    wall_seconds: float
    isolation: tuple[str, ...] = ()  # what was applied: "netns", "mountns", "pidns", "uid=...", ...

    @property
    def passed(self) -> bool:
        return self.status == "passed"
