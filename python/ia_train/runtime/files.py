"""Writing a run's files so that a crash or a full disk never leaves a half-written one.

`write_text` / `write_json` write to `<name>.tmp`, fsync it and rename it over the target (atomic
within a file system), so a reader sees the old file or the new one, never a part. Every write that
fails (no space left, read-only file system, permissions, ...) raises `RunFileError`, whose message
is one line naming the path; the command line prints it and exits instead of a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError


class RunFileError(Exception):
    """A file of the run cannot be written or read; the message is one line that names the path."""


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def reason(error: BaseException, path: Path) -> str:
    """Why writing `path` failed, in a few words."""
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on device"
        return os.strerror(error.errno).lower()
    # torch.save reports a full disk as an opaque RuntimeError from its zip writer.
    free = _free_bytes(Path(path).parent)
    if free is not None and free < (1 << 20):
        return "no space left on device"
    text = str(error).strip().splitlines()
    return f"write failed ({text[-1][:160] if text else type(error).__name__})"


def write_failed(path: Path, error: BaseException, hint: str = "") -> RunFileError:
    return RunFileError(f"cannot write {path}: {reason(error, path)}{hint}")


@contextmanager
def writing(path: Path, hint: str = ""):
    """Turns a failed write of `path` (OSError, or torch.save's RuntimeError) into a RunFileError."""
    try:
        yield
    except RunFileError:
        raise
    except (OSError, RuntimeError) as e:
        raise write_failed(path, e, hint) from None


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8): a temporary file, fsynced, renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise write_failed(path, e) from None


def write_json(path: Path, value, indent: int | None = 2) -> None:
    write_text(path, json.dumps(value, indent=indent))


def read_json(path: Path):
    """The JSON value in `path`; RunFileError (one line) when it is missing, not UTF-8 or not JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunFileError(f"{path} is unreadable ({str(e).splitlines()[0][:120]})") from None


def check_output_dir(out: str | Path) -> None:
    """ConfigError unless `out` is, or can be created as, a directory this process can write to.
    Nothing is created: the check writes a probe file in `out` or its nearest existing parent."""
    if not str(out).strip():
        raise ConfigError("--out is empty; give a directory path (an empty one would write into the working directory)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; give a directory path (it is created if missing)")
    existing = out
    while not existing.exists():
        if existing.is_symlink():  # exists() is False for a link that loops or points nowhere
            raise ConfigError(f"--out {out}: {existing} is a symbolic link that leads nowhere (a loop, or a missing "
                              "target); give another path")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so the directory cannot be created; give another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ia-train-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if existing == out else f" (cannot create it in {existing})"
        raise ConfigError(f"--out {out} is not writable{where}: {(e.strerror or str(e)).lower()}; "
                          "give a directory you can write to") from None
