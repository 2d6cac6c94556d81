"""run_tests' harness: trusted code that runs the problem's `check(candidate)` in the sandbox, with
`candidate` a proxy to the solution process (runner.py), and writes the proof of completion.

Not imported: ia_train.sandbox reads this file as text and runs it with `python -I -c` inside the
sandbox, as `<harness> <payload fd> <proof fd>`. It holds nothing secret in its source: the nonce
and the tests arrive through the payload memfd, which it reads and closes, and it makes itself
non-dumpable, before the solution process starts.
"""

import ctypes
import json
import marshal
import os
import subprocess
import sys

_PLAIN_ATOMS = (int, float, complex, str, bytes, bool, type(None))
_LIMIT = 64 << 20


class SolutionFailure(Exception):
    pass


def _plain(value, depth=0):
    kind = type(value)
    if kind in _PLAIN_ATOMS:
        return value
    if depth > 100:
        raise SolutionFailure("result nested too deeply")
    if kind in (list, tuple, set, frozenset):
        for item in value:
            _plain(item, depth + 1)
        return value
    if kind is dict:
        for k, v in value.items():
            _plain(k, depth + 1)
            _plain(v, depth + 1)
        return value
    raise SolutionFailure(f"result of type {kind.__name__} is not plain data")


def main():
    payload_fd, proof_fd = int(sys.argv[1]), int(sys.argv[2])
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/{mem,fd,environ} closed
    with os.fdopen(payload_fd, "rb") as f:
        payload = json.loads(f.read())
    nonce = payload.pop("nonce")

    def verdict(ok, reason):
        line = nonce + " " + json.dumps({"ok": ok, "reason": reason[:400]}) + "\n"
        os.write(proof_fd, line.encode())
        os.close(proof_fd)

    call_r, call_w = os.pipe()
    ret_r, ret_w = os.pipe()
    solution = subprocess.Popen(
        [sys.executable, "-I", "-c", payload["runner"], payload["entry_point"], str(call_r), str(ret_w)],
        stdin=subprocess.DEVNULL, pass_fds=(call_r, ret_w), close_fds=True,
    )
    os.close(call_r)
    os.close(ret_w)
    calls, results = os.fdopen(call_w, "wb"), os.fdopen(ret_r, "rb")

    def ended():
        try:
            code = solution.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the solution process stopped answering"
        if code < 0:
            import signal
            return f"the solution process was killed by {signal.Signals(-code).name}"
        return f"the solution process exited with code {code}"

    def receive():
        header = results.read(8)
        if len(header) < 8:
            raise SolutionFailure(ended())
        size = int.from_bytes(header, "little")
        if size > _LIMIT:
            raise SolutionFailure("result too large")
        data = results.read(size)
        if len(data) < size:
            raise SolutionFailure(ended())
        try:
            message = marshal.loads(data)
        except Exception as e:
            raise SolutionFailure(f"unreadable result ({type(e).__name__})") from None
        if type(message) is not tuple or len(message) != 2 or type(message[0]) is not str:
            raise SolutionFailure("malformed result")
        return message[0], _plain(message[1])

    def candidate(*args, **kwargs):
        data = marshal.dumps((args, kwargs))
        try:
            calls.write(len(data).to_bytes(8, "little") + data)
            calls.flush()
        except OSError:
            raise SolutionFailure(ended()) from None
        kind, value = receive()
        if kind == "ok":
            return value
        raise SolutionFailure(str(value))

    try:
        kind, value = receive()
        if kind != "ready":
            raise SolutionFailure(str(value))
        namespace = {"__name__": "__tests__"}
        exec(compile(payload["tests"], "<tests>", "exec"), namespace)
        namespace[payload["entry_point"]] = candidate  # tests may call the function by its name
        namespace["check"](candidate)
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, SolutionFailure) else str(e)
        verdict(False, reason)
        solution.kill()
        os._exit(1)
    verdict(True, "all tests passed")
    solution.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
