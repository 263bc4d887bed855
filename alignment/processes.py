"""Processes the project starts in the background (the Prefect server, the serve process, managed `vllm
serve` guards): a pid file each under ``$ALIGNMENT_HOME/run`` holding the pid *and its start time*, so a
pid the system reused for another program is never taken for ours, and the reaping `alignment stop` does.
"""

import os
import signal
import time
from pathlib import Path


def run_dir() -> Path:
    from alignment.artifacts import private_home

    d = private_home() / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if gone.
    A zombie (killed, not yet reaped by its parent: a server killed under a run that started it) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields after the command name start at field 3 (state)
    return None if fields[0] in ("Z", "X") else fields[19]


def pid_file(name: str, pid: int, extra: str = "") -> Path:
    path = run_dir() / f"{name}.pid"
    path.write_text(f"{pid} {start_time(pid) or '?'} {extra}".strip())
    return path


def record(name: str) -> tuple[int, list[str]] | None:
    """(pid, extra words) of a live process of ours named `name`; a stale or reused pid file is removed."""
    path = run_dir() / f"{name}.pid"
    try:
        pid, started, *extra = path.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    if start_time(pid) is None or start_time(pid) != started:
        path.unlink(missing_ok=True)
        return None
    return pid, extra


def live_pid(name: str) -> int | None:
    found = record(name)
    return found[0] if found else None


def names() -> list[str]:
    return sorted(p.stem for p in run_dir().glob("*.pid"))


def stop(name: str, grace: float = 10.0) -> bool:
    """SIGTERM the process group of `name`, SIGKILL it after `grace` seconds; False if it was not running."""
    pid = live_pid(name)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while time.time() < deadline and start_time(pid) is not None:
            time.sleep(0.2)
        if start_time(pid) is None:
            break
    (run_dir() / f"{name}.pid").unlink(missing_ok=True)
    return True
