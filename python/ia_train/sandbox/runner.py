"""run_tests' solution process: loads the model's code (solution.py in the working directory) as its
own module and answers the harness's calls of the entry point, as marshal data over two pipes.

Not imported: ia_train.sandbox reads this file as text and the harness runs it with `python -I -c`
inside the sandbox, as `<runner> <entry point> <calls fd> <results fd>`.
"""

import importlib.util
import marshal
import os
import sys
import traceback


def main():
    entry, calls, results = sys.argv[1], os.fdopen(int(sys.argv[2]), "rb"), os.fdopen(int(sys.argv[3]), "wb")

    def send(kind, value):
        try:
            data = marshal.dumps((kind, value))
        except ValueError:
            data = marshal.dumps(("error", f"the result ({type(value).__name__}) is not plain data"))
        results.write(len(data).to_bytes(8, "little") + data)
        results.flush()

    try:
        spec = importlib.util.spec_from_file_location("solution", "solution.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function = getattr(module, entry)
    except BaseException as e:
        traceback.print_exc()
        send("error", f"the solution failed to load: {type(e).__name__}: {e}")
        sys.exit(1)
    send("ready", None)
    while True:
        header = calls.read(8)
        if len(header) < 8:
            break
        args, kwargs = marshal.loads(calls.read(int.from_bytes(header, "little")))
        try:
            value = function(*args, **kwargs)
        except BaseException as e:
            send("error", f"{type(e).__name__}: {e}")
            continue
        send("ok", value)


if __name__ == "__main__":
    main()
