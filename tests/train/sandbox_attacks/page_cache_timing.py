"""Bits in the page cache without the refused syscalls: a run reads pages of a large read-only system
file (caching them), and the next run times its reads of the same pages (a cached page answers in
about 2 us, one from disk in about 100 us). Reading sets the bit for good, and without fadvise a run
cannot clear it: each page carries one bit, once. The sandbox's answer is to evict, when a run ends,
the page cache the run brought in (its cgroup's memory); without a cgroup (an unprivileged caller
without a delegated one) the bits stay.

Completed by the driver with `write(bits)` or `print(read(count))`. The pages are 1 MiB apart, out
of any readahead window.
"""

import os
import time

_BASE = 16 << 20  # bytes into the file
_STRIDE = 1 << 20


def _store():
    """The same file in every run: the last (by name) large library on the system."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        try:
            names = sorted(os.listdir(folder), reverse=True)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) >= 96 << 20:
                    return path
            except OSError:
                continue
    return None


def offsets(count):
    return [_BASE + i * _STRIDE for i in range(count)]


def write(bits):
    fd = os.open(_store(), os.O_RDONLY)
    for offset, bit in zip(offsets(len(bits)), bits):
        if bit:
            os.pread(fd, 1, offset)


def read(count, threshold_ns=20_000):
    fd = os.open(_store(), os.O_RDONLY)
    bits = []
    for offset in offsets(count):
        start = time.perf_counter_ns()
        os.pread(fd, 1, offset)
        bits.append(int(time.perf_counter_ns() - start < threshold_ns))
    return bits
