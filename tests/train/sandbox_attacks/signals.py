"""Wrong HumanEval/0 responses that signal the sandbox's own processes instead of answering. Each
body completes has_close_elements' prompt. Against the launcher before it gave the program its own
session and reset its signal handlers, the unprivileged mode lost the run: the pid namespace's init
(a fork of the launcher, with Python's SIGINT handler) raised KeyboardInterrupt and exited without
reporting, and kill(0, ...) reached the launcher, which led the program's process group; the parent
reported "error" and HumanEvalTask.score_batch raised: one completion ended the training run."""

RESPONSES = {
    "kill(1, SIGINT): the pid namespace's init": (
        "    import os, signal, time\n"
        "    os.kill(1, signal.SIGINT)\n"
        "    time.sleep(0.5)\n"
        "    return True\n"
    ),
    "kill(0, SIGKILL): the process group": (
        "    import os, signal\n"
        "    os.kill(0, signal.SIGKILL)\n"
    ),
    "kill(0, SIGINT): the process group": (
        "    import os, signal, time\n"
        "    os.kill(0, signal.SIGINT)\n"
        "    time.sleep(0.5)\n"
        "    return True\n"
    ),
    "SIGTERM, SIGHUP, SIGSTOP to init and the group": (
        "    import os, signal, time\n"
        "    for pid in (1, 0):\n"
        "        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGSTOP):\n"
        "            try:\n"
        "                os.kill(pid, sig)\n"
        "            except OSError:\n"
        "                pass\n"
        "    time.sleep(0.5)\n"
        "    return True\n"
    ),
}
