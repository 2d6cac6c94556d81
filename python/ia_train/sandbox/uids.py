"""Uid slots (root runs): each concurrent run drops to an unprivileged uid of its own, claimed
machine-wide, and whatever still runs as that uid after the run is killed before the slot is free."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import subprocess
import sys
import threading
import time

from .limits import SandboxUnavailable

# High enough to be unused by real accounts; override with IA_SANDBOX_UID_BASE.
UID_BASE = int(os.environ.get("IA_SANDBOX_UID_BASE", "1990000"))
UID_SLOTS = 512
LOCK_DIR = "/run/ia_sandbox_uids"  # root-owned, independent of TMPDIR
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
_log = logging.getLogger("ia_train.sandbox")
# Slots whose uid still had processes after reaping: held for the life of this process, so no later
# run shares a uid with a leftover.
_retired: list[int] = []


class UidSlot:
    """Claims an unprivileged uid for one run, system-wide (a lock file per uid, in a root-owned
    directory: another user cannot pre-create or hold the locks)."""

    _local_lock = threading.Lock()

    def __init__(self):
        self.uid = None
        self._fd = None

    def __enter__(self):
        try:
            os.mkdir(LOCK_DIR, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(LOCK_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise SandboxUnavailable(f"{LOCK_DIR} must be a directory owned by root and writable only by root")
        with self._local_lock:
            for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
                fd = os.open(os.path.join(LOCK_DIR, str(uid)), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another run holds this uid
                    os.close(fd)
                    continue
                except OSError as e:
                    os.close(fd)
                    raise SandboxUnavailable(f"cannot lock the sandbox's uid slots in {LOCK_DIR}: {e}") from None
                self.uid, self._fd = uid, fd
                return self
        raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids are in use")

    def __exit__(self, *exc):
        if not reap_uid(self.uid):
            _log.warning("ia_train.sandbox: processes of uid %d outlived their run; the slot stays retired", self.uid)
            _retired.append(self._fd)
            return
        os.close(self._fd)


class NoSlot:
    """Unprivileged callers: the program keeps the caller's uid inside a user namespace."""

    uid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by `uid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
                pids.append(int(entry))
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return pids


def reap_uid(uid: int) -> bool:
    """Kill whatever still runs as the slot's uid (e.g. a child that left the process group). True
    when nothing is left."""
    for _ in range(5):
        if not processes_of(uid):
            return True
        try:
            subprocess.run([sys.executable, "-I", "-S", LAUNCHER, "--kill-uid", str(uid)], timeout=10)
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.01)
    return not processes_of(uid)
