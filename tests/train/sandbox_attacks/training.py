"""A training run's worth of hostile completions through HumanEvalTask.score_batch: every attack class
of this directory, repeated, mixed with correct solutions, in shuffled batches scored in parallel as
the trainer scores them. The verdict: no wrong answer ever scores 1, no call raises, and every
correct solution scores 1.

`python training.py [--rounds N] [--json]` runs it as the current user (the tests run it as root and,
dropping to an unprivileged uid, in the sandbox's user-namespace mode).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _text(name: str) -> str:
    with open(os.path.join(HERE, name)) as f:
        return f.read()


def _module(name: str) -> dict:
    namespace: dict = {"__file__": os.path.join(HERE, name), "__name__": name[:-3]}
    exec(compile(_text(name), name, "exec"), namespace)
    return namespace


def hostile_completions() -> dict[str, tuple[str, str]]:
    """name -> (problem uid, a wrong response that tries to score 1 or to take the trainer down)."""
    attacks = _module("attacks.py")
    out = {f"fake: {name}": (f"HumanEval/{(0, 1, 2)[index]}", body)
           for name, (index, body) in attacks["REWARD_FAKES"].items()}
    out.update({f"signal: {name}": ("HumanEval/0", body) for name, body in _module("signals.py")["RESPONSES"].items()})
    out["crash: kill parent, pid 1, kill(-1), garbage into every fd"] = (
        "HumanEval/0", "    exec(" + repr(attacks["_CRASHER"]) + ")\n")
    out["learn: a table of failed asserts in the page cache"] = ("HumanEval/0", _text("page_cache_table.py"))
    out["crash: a completion larger than the run's scratch space"] = ("HumanEval/0", attacks["huge_completion"]())
    for name, call in (
        ("vsock", "import socket\n    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n"
                  "    s.bind((socket.VMADDR_CID_ANY, 4242))\n    s.listen(1)"),
        ("netlink", "import socket\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)"),
        ("fanotify and inotify", "import ctypes\n    libc = ctypes.CDLL(None)\n    assert libc.syscall(300, 0x200, 0) >= 0\n"
                                 "    assert libc.inotify_add_watch(libc.inotify_init1(0), b'/etc', 0x21) >= 0"),
        ("a lock on /etc/hostname", "import fcntl, os\n    fcntl.flock(os.open('/etc/hostname', os.O_RDONLY), fcntl.LOCK_EX)"),
        ("fadvise and RWF_NOWAIT", "import os\n    fd = os.open('/etc/hostname', os.O_RDONLY)\n"
                                   "    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
                                   "    os.preadv(fd, [bytearray(8)], 0, os.RWF_NOWAIT)"),
    ):
        out[f"channel: {name}, then a wrong answer"] = ("HumanEval/0", f"    {call}\n    return True\n")
    return out


def train(rounds: int = 5, correct: int = 15, workers: int = 2, seed: int = 0) -> dict:
    """`rounds` batches, each of every hostile completion once and `correct` correct solutions,
    shuffled, through one HumanEvalTask with `workers` runs at a time."""
    from ia_train.tasks.humaneval import HumanEvalTask

    task = HumanEvalTask(workers=workers)
    by_uid = {p.uid: p for p in task.problems("train", 100, 0) + task.problems("eval", 0, 0)}
    hostile = hostile_completions()
    correct_pool = [p for uid, p in sorted(by_uid.items()) if int(uid.split("/")[1]) % 5 == 0]
    rng = random.Random(seed)
    summary = {"completions": 0, "hostile": 0, "wrong_scored_1": [], "raised": [], "correct_scored_0": []}
    start = time.monotonic()
    try:
        for _ in range(rounds):
            cases = [(name, by_uid[uid], response, 0.0) for name, (uid, response) in hostile.items()]
            for p in rng.sample(correct_pool, min(correct, len(correct_pool))):
                cases.append((f"correct: {p.uid}", p, p.meta["canonical_solution"], 1.0))
            rng.shuffle(cases)
            try:
                scores = task.score_batch([c[1] for c in cases], [c[2] for c in cases])
            except Exception as e:  # noqa: BLE001 - the breach this run looks for
                summary["raised"].append(f"{type(e).__name__}: {str(e)[:300]}")
                continue
            summary["completions"] += len(cases)
            summary["hostile"] += len(hostile)
            for (name, _, _, expected), score in zip(cases, scores):
                if expected == 0.0 and score != 0.0:
                    summary["wrong_scored_1"].append(name)
                if expected == 1.0 and score != 1.0:
                    summary["correct_scored_0"].append(name)
    finally:
        task.close()
    summary["seconds"] = round(time.monotonic() - start, 1)
    return summary


def main() -> None:
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    summary = train(rounds)
    if "--json" in sys.argv:
        print("IA_TRAINING_RESULTS " + json.dumps(summary))
    else:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
