"""A program (run_python) that locks a file of the host's shared, read-only tree: flock and POSIX
locks work on a file opened for reading, and every other run (and the host) sees the lock. The
driver tries the same lock outside the sandbox while this holds it."""

import fcntl
import os
import time

held = []
fd = os.open("/etc/hostname", os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.append("flock")
except OSError as e:
    print("flock refused", e, flush=True)
try:
    fcntl.lockf(os.open("/etc/hostname", os.O_RDONLY), fcntl.LOCK_SH | fcntl.LOCK_NB)
    held.append("posix read lock")
except OSError as e:
    print("posix lock refused", e, flush=True)
print("holding", held, flush=True)
time.sleep(1.5)
