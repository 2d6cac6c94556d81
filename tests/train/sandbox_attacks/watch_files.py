"""A program (run_python) that watches the host's shared, read-only tree for other runs opening
files: inotify on /etc, and fanotify where the kernel allows an unprivileged caller. Whatever another
run opens there is a bit. The driver opens /etc/hostname outside the sandbox while this waits."""

import ctypes
import os
import select

libc = ctypes.CDLL(None, use_errno=True)
IN_ACCESS, IN_OPEN = 0x1, 0x20

fan = libc.syscall(300, 0x200, 0)  # fanotify_init(FAN_REPORT_FID, O_RDONLY)
print("fanotify", "created" if fan >= 0 else f"refused ({os.strerror(ctypes.get_errno())})", flush=True)
fd = libc.inotify_init1(0)
if fd < 0:
    print("inotify refused", os.strerror(ctypes.get_errno()), flush=True)
else:
    if libc.inotify_add_watch(fd, b"/etc", IN_ACCESS | IN_OPEN) < 0:
        print("watch refused", os.strerror(ctypes.get_errno()), flush=True)
    else:
        print("watching", flush=True)
        if select.select([fd], [], [], 2.0)[0]:
            event = os.read(fd, 4096)
            print("saw", event[16:].split(b"\0")[0].decode(errors="replace"), flush=True)
