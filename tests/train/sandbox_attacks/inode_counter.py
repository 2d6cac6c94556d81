"""A channel the sandbox does not close: the kernel numbers the inodes of pipes, sockets and /proc
entries from one machine-wide counter (per CPU, in batches of 1024 taken from a shared one), and any
program sees the number of the pipe it creates. A run that creates pipes until its CPU's counter
sits at a chosen position leaves a number the next run on that CPU reads back.

Two programs for run_python, completed by the attack driver with one line: `write(symbol)` in one
run, then `print(read())` in the next. A symbol is 0..13 (about 3.8 bits): its position in the
batch, in bins of 64 so the inodes the sandbox itself takes between the runs do not move it out.
"""

import os

_BIN = 64


def _pin():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # writer and reader on the same CPU


def _next():
    r, w = os.pipe()
    number = os.fstat(r).st_ino
    os.close(r)
    os.close(w)
    return number


def write(symbol):
    _pin()
    target = symbol * _BIN + 1
    while _next() % 1024 != target:
        pass


def read():
    _pin()
    return (_next() % 1024) // _BIN
