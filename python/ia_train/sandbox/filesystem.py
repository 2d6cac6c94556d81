"""The parent side of the programs' filesystem view: which interpreter runs them, which host paths
they must not see, and cleaning up the run's directory. The launcher mounts the view."""

from __future__ import annotations

import os
import shutil
import sys

# Top-level directories a program may see (read-only): the system's. Everything else at the top
# level is hidden: a machine's other checkouts, virtualenvs, wheel caches and datasets live there
# (/work, /opt, /srv, /mnt, ...), and hiding one known path at a time is a game a policy wins. /dev
# and /proc are replaced by the launcher (a /dev of five devices, a /proc of the run's processes);
# /sys is hidden: nothing a program needs is there, and the machine's figures and every run's
# cgroup are.
SYSTEM_ROOTS = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp",
                          "var", "run", "boot"})

_interpreter_cache: dict = {}


def sandbox_python() -> str:
    """An interpreter the sandbox uid can execute: IA_SANDBOX_PYTHON when set, else sys.executable
    when every directory on its path is open to other users, else the system python3 (as root,
    sys.executable may live under a private home, such as pyenv under /root)."""
    if os.environ.get("IA_SANDBOX_PYTHON"):
        return os.environ["IA_SANDBOX_PYTHON"]
    if "python" in _interpreter_cache:
        return _interpreter_cache["python"]
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    choice = sys.executable
    if os.geteuid() == 0:
        for path in candidates:
            if os.path.exists(path) and world_executable(path):
                choice = path
                break
    _interpreter_cache["python"] = choice
    return choice


def world_executable(path: str) -> bool:
    """True when an unrelated unprivileged user can execute `path` (every directory searchable)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


def private_paths() -> list[str]:
    """Everything at the top level but the system's directories, and the caller's home: hidden from
    programs (the interpreter's own directories are brought back by the launcher)."""
    try:
        tops = [os.path.join("/", name) for name in os.listdir("/")
                if name not in SYSTEM_ROOTS and os.path.isdir(os.path.join("/", name))
                and not os.path.islink(os.path.join("/", name))]
    except OSError:
        tops = []
    paths = ["/root", "/home", *tops]
    try:
        import pwd

        paths.append(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    if os.environ.get("HOME"):
        paths.append(os.environ["HOME"])
    return [os.path.realpath(p) for p in paths if p and os.path.realpath(p) != "/"]


def interpreter_paths(python: str) -> list[str]:
    """Directories the interpreter needs (kept visible inside hidden homes)."""
    paths = set()
    for exe in (python, os.path.realpath(python)):
        paths.add(os.path.dirname(os.path.dirname(os.path.abspath(exe))))
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths.update({sys.prefix, sys.base_prefix})
    return sorted(os.path.realpath(p) for p in paths)


def remove_tree(path: str) -> None:
    """Remove `path`, making directories writable first (the program's files may be read-only);
    symlinks are never followed."""

    def unlock(dir_fd: int) -> None:
        for entry in os.scandir(dir_fd):
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.chmod(entry.name, 0o700, dir_fd=dir_fd)  # a directory, not a link (checked above)
                fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                unlock(fd)
            finally:
                os.close(fd)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        unlock(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
