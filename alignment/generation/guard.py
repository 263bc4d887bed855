"""Run a server process so that it dies with its owner: ``python -m alignment.generation.guard OWNER_PID
GRACE_S -- COMMAND...``.

The guard starts COMMAND as its child (both in the process group the owner gave the guard) and watches
the owner's pid. When the owner is gone — SIGKILL and OOM included, which no handler in the owner can
catch — or when the guard gets SIGTERM, it sends COMMAND SIGTERM, waits GRACE_S (longer than vLLM's own
shutdown) and then kills what is left of the group. The guard exits with COMMAND's exit code.
"""

import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    owner, grace = int(argv[0]), float(argv[1])
    command = argv[argv.index("--") + 1 :]
    child = subprocess.Popen(command)
    stopping = []

    def stop(*_args) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while child.poll() is None:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            stopping.append(True)
        if stopping:
            child.terminate()
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(os.getpgrp(), signal.SIGKILL)  # whatever the server left behind (and the guard)
        time.sleep(0.5)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
