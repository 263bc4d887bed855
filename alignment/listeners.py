"""Whose is a loopback port? The proof a client gives itself before it sends a credential to a server the
project started (the Prefect server, a managed `vllm serve`).

Anyone on the machine can bind a free loopback port. While our server is down, another local user can
listen on its port and collect whatever a client sends there, or run a server of their own that answers
like ours. A health check proves nothing (any HTTP server answers one). What does prove it: the kernel's
socket table says which socket listens on the port, and ``/proc/<pid>/fd`` says which process holds it;
that process must be the one we started (its pid *and* start time, from its pid file) or a descendant
of it. Another user's process cannot pass (its descriptors are not even readable to us), nor can one of
our own that we did not start.

Linux only (``/proc``); elsewhere the proof fails closed, with a message that says so.
"""

import os
from pathlib import Path

from alignment.processes import start_time

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp
LOOPBACK_V4 = ("0100007F", "00000000")  # 127.0.0.1 and 0.0.0.0 (little-endian hex, as the kernel writes them)
LOOPBACK_V6 = ("00000000000000000000000001000000", "00000000000000000000000000000000",
               "0000000000000000FFFF00000100007F")  # ::1, ::, ::ffff:127.0.0.1


def listening_inodes(port: int) -> dict[int, int]:
    """{socket inode: owner uid} of the TCP sockets listening on `port` at a loopback or any address."""
    found: dict[int, int] = {}
    for table, local in (("/proc/net/tcp", LOOPBACK_V4), ("/proc/net/tcp6", LOOPBACK_V6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and address.upper() in local:
                found[int(fields[9])] = int(fields[7])
    return found


def socket_holders(inodes: set[int]) -> set[int]:
    """Pids of the processes that hold one of the sockets `inodes` open (those whose fds we may read)."""
    wanted = {f"socket:[{i}]" for i in inodes}
    holders: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    holders.add(int(proc.name))
                    break
        except OSError:  # another user's process, or gone meanwhile: not one we can vouch for
            continue
    return holders


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid and pid != 1 and seen < 64:
        if pid == ancestor:
            return True
        pid, seen = parent(pid) or 0, seen + 1
    return pid == ancestor


def not_ours(port: int, pid: int | None, started: str | None) -> str | None:
    """Why the listener on 127.0.0.1:`port` is not the process `pid` (started at `started`, from its pid
    file) or one of its children; None when it is. Nothing is sent to the port to find out."""
    if not Path("/proc/net/tcp").is_file():
        return "this system has no /proc to tell which process holds the port (Linux only)"
    if pid is None or started is None or start_time(pid) != started:
        return "no server process of ours is running (no live pid file)"
    inodes = listening_inodes(port)
    if not inodes:
        return "nothing listens there"
    if set(inodes.values()) - {os.getuid()}:
        return "the listening socket belongs to another user"
    holders = socket_holders(set(inodes))
    if not holders:
        return "no process of ours holds the listening socket"
    strangers = sorted(h for h in holders if not descends_from(h, pid))
    if strangers:
        return f"the listening socket is held by pid {strangers[0]}, which is not our server (pid {pid}) or its child"
    return None
