"""A program (run_python) that looks for machine-wide figures another run can move (memory, load,
open files, locks, every run's cgroup), the kernel log and the host's devices. Each one found is
printed; the sandbox should show none."""

import ctypes
import os

found = []
for path in ("/proc/meminfo", "/proc/loadavg", "/proc/stat", "/proc/vmstat", "/proc/locks", "/proc/sys/fs/file-nr",
             "/proc/sys/fs/inode-nr", "/proc/pressure/memory", "/sys/fs/cgroup", "/sys/block", "/dev/kmsg",
             "/dev/vsock", "/dev/ptmx", "/dev/pts", "/dev/fuse", "/dev/net/tun"):
    try:
        if os.path.isdir(path):
            if os.listdir(path):
                found.append(path)
        else:  # opened is enough (/dev/kmsg would block a read until the next message)
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            found.append(path)
    except OSError:
        pass
info = ctypes.create_string_buffer(256)
if ctypes.CDLL(None, use_errno=True).syscall(99, info) == 0:  # sysinfo: free memory, process count, load
    found.append("sysinfo()")
cgroup = open("/proc/self/cgroup").read()
if "ia-sandbox" in cgroup:
    found.append("the run's cgroup path")
print("found", found)
