"""A cgroup per run, where the caller may create one: it bounds the whole run (memory, processes,
CPU), kills every process in it at the end, tells an OOM kill apart, and, at release, gives back
the page cache the run brought in (so no file page a run read stays cached for the next run to
find). cgroup v2 (a delegated subtree) and v1 (memory + pids, and cpu) are two classes."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

from .limits import SandboxLimits

_counter = [0]
_counter_lock = threading.Lock()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _name() -> str:
    with _counter_lock:
        _counter[0] += 1
        return f"ia-sandbox-{os.getpid()}-{_counter[0]}"


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of this process's mounts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3:
                out.append((fields[4].encode().decode("unicode_escape"), rest[0], rest[2]))
    return out


def _own_cgroups() -> dict[str, str]:
    """controller ("" for v2) -> this process's cgroup path."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


class Cgroup:
    """One run's cgroup (one directory per hierarchy)."""

    version = 0

    def __init__(self, dirs: list[str]):
        self.dirs = dirs

    @property
    def tag(self) -> str:
        return f"cgroup{self.version}"

    @property
    def procs(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def _pids(self) -> set[int]:
        pids = set()
        for procs in self.procs:
            try:
                with open(procs) as f:
                    pids.update(int(p) for p in f.read().split())
            except (OSError, ValueError):
                pass
        return pids

    def kill(self) -> None:
        """SIGKILL every process in the run's cgroup until none is left (bounded)."""
        for _ in range(100):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def reclaim(self) -> None:
        """Evict what is charged to the run: the page cache (and dentries, inodes) it brought in."""
        raise NotImplementedError

    def release(self, reclaim: bool = True) -> None:
        """Kill what is left, give back the run's page cache (unless told not to: a trusted warm-up
        run leaves the interpreter's files cached for the runs after it), remove the cgroup."""
        self.kill()
        if reclaim:
            try:
                self.reclaim()
            except OSError:
                pass
        for path in reversed(self.dirs):
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


class CgroupV2(Cgroup):
    """Under IA_SANDBOX_CGROUP (a delegated cgroup v2 directory) or this process's own v2 cgroup,
    when it can enable the memory and pids controllers for its children."""

    version = 2

    @classmethod
    def create(cls, limits: SandboxLimits, own: dict, mounts: list) -> CgroupV2 | None:
        parent = os.environ.get("IA_SANDBOX_CGROUP")
        if not parent:
            roots = [m for m, fstype, _ in mounts if fstype == "cgroup2"]
            if not roots or "" not in own:
                return None
            parent = os.path.join(roots[0], own[""].lstrip("/"))
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
            if not {"memory", "pids"} <= set(enabled):
                with open(os.path.join(parent, "cgroup.controllers")) as f:
                    available = set(f.read().split())
                if not {"memory", "pids"} <= available:
                    return None
                wanted = [c for c in ("memory", "pids", "cpu") if c in available and c not in enabled]
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            path = os.path.join(parent, _name())
            os.mkdir(path)
        except OSError:
            return None
        group = cls([path])
        try:
            _write(os.path.join(path, "memory.max"), str(limits.total_memory_bytes or limits.memory_bytes))
            _write(os.path.join(path, "pids.max"), str(limits.max_processes + 3))  # + launcher, init, its helper
            for name, value in (("memory.swap.max", "0"), ("cpu.max", f"{int(limits.cpu_cores * 100000)} 100000")):
                if os.path.exists(os.path.join(path, name)):
                    _write(os.path.join(path, name), value)
        except OSError:
            group.release(reclaim=False)
            return None
        return group

    def kill(self) -> None:
        try:  # cgroup.kill (Linux 5.14+) kills atomically, forks included
            _write(os.path.join(self.dirs[0], "cgroup.kill"), "1")
        except OSError:
            pass
        super().kill()

    def oom_killed(self) -> bool:
        try:
            with open(os.path.join(self.dirs[0], "memory.events")) as f:
                fields = dict(line.split() for line in f if len(line.split()) == 2)
            return int(fields.get("oom_kill", "0")) > 0
        except (OSError, ValueError):
            return False

    def reclaim(self) -> None:
        path = self.dirs[0]
        try:  # memory.reclaim (Linux 5.19+): EAGAIN when less than asked could be reclaimed
            _write(os.path.join(path, "memory.reclaim"), str(1 << 40))
        except OSError as e:
            if e.errno != errno.ENOENT:
                return
            # Older kernels: a memory.max of 0 reclaims everything (the OOM killer finds no process).
            _write(os.path.join(path, "memory.max"), "0")


class CgroupV1(Cgroup):
    """v1 memory and pids hierarchies (and cpu where mounted), under this process's own cgroups."""

    version = 1

    @classmethod
    def create(cls, limits: SandboxLimits, own: dict, mounts: list) -> CgroupV1 | None:
        def hierarchy(controller):
            for mount_point, fstype, options in mounts:
                if fstype == "cgroup" and controller in options.split(",") and controller in own:
                    return os.path.join(mount_point, own[controller].lstrip("/"))
            return None

        name, group = _name(), cls([])
        memory = limits.total_memory_bytes or limits.memory_bytes
        try:
            for controller in ("memory", "pids", "cpu"):
                parent = hierarchy(controller)
                if parent is None:
                    if controller == "cpu":
                        continue
                    raise OSError(errno.ENOENT, f"no v1 {controller} hierarchy")
                path = os.path.join(parent, name)
                os.mkdir(path)
                group.dirs.append(path)
                if controller == "memory":
                    _write(os.path.join(path, "memory.limit_in_bytes"), str(memory))
                    try:
                        _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(memory))
                    except OSError:
                        pass
                elif controller == "pids":
                    _write(os.path.join(path, "pids.max"), str(limits.max_processes + 3))
                else:
                    _write(os.path.join(path, "cpu.cfs_period_us"), "100000")
                    _write(os.path.join(path, "cpu.cfs_quota_us"), str(int(limits.cpu_cores * 100000)))
        except OSError:
            group.release(reclaim=False)
            return None
        return group

    @property
    def _memory(self) -> str:
        return self.dirs[0]  # created first

    def oom_killed(self) -> bool:
        try:
            with open(os.path.join(self._memory, "memory.oom_control")) as f:
                fields = dict(line.split() for line in f if len(line.split()) == 2)
            return int(fields.get("oom_kill", "0")) > 0
        except (OSError, ValueError, IndexError):
            return False

    def reclaim(self) -> None:
        _write(os.path.join(self._memory, "memory.force_empty"), "0")


def create_cgroup(limits: SandboxLimits) -> Cgroup | None:
    """The run's cgroup: v2 where a delegated subtree allows it, else v1; None where neither is
    writable (typical for unprivileged callers: per-process limits only)."""
    try:
        own, mounts = _own_cgroups(), mountinfo()
    except OSError:
        return None
    return CgroupV2.create(limits, own, mounts) or CgroupV1.create(limits, own, mounts)
