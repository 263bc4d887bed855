"""The Prefect server killed (SIGKILL) in the middle of `alignment run`: the run stops before its next
stage with a clear error (exit 1) instead of hanging or starting work it cannot report; what it committed
stays whole; the next `alignment run` restarts the server, marks the dead run Crashed and reuses every
committed stage. Real processes, a real server on its own port and home. Marked slow: Prefect's client
retries each call (3 times over 14 s, `flows.service.server.apply_defaults`), so the first run takes about
1.5 minutes to end (84 s measured)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_killed_mid_run_ends_the_run_clearly_and_a_rerun_reuses_what_was_committed(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "ALIGNMENT_HOME": str(home), "ALIGNMENT_PREFECT_PORT": str(free_port()),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_AUTH_STRING", None)
    cmd = [sys.executable, "-m", "flows.service.cli", "run", "tiny", "-p", "evaluate=null"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not list((home / "store" / "sft").glob("*/manifest.json")):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        server_pid = int((home / "run" / "server.pid").read_text().split()[0])
        os.kill(server_pid, signal.SIGKILL)
        killed = time.time()
        rc = first.wait(timeout=400)
        ended_after = time.time() - killed
    finally:
        first.kill()
        log.close()
    out = (tmp_path / "first.log").read_text()
    assert rc == 1, out[-3000:]
    assert "error: lost the Prefect server" in out and "committed stages are reused" in out, out[-3000:]
    # where the kill lands decides who notices first: the chain before its next stage ("stopped answering
    # before ..."), or Prefect's own client inside a task; either way the run ends with the message above
    assert ended_after < 300, f"the run took {ended_after:.0f} s to end after the server died"

    store = home / "store"
    for artifact in (p for p in store.glob("*/*") if p.is_dir()):  # whole, or not there: nothing partial
        manifest = json.loads((artifact / "manifest.json").read_text())
        for rel, meta in manifest["files"].items():
            assert (artifact / rel).stat().st_size == meta["size"], f"{artifact}/{rel}"
    committed = {p.parent.parent.name for p in store.glob("*/*/manifest.json")}
    assert "sft" in committed
    committed_keys = {p.parent.name for p in store.glob("*/*/manifest.json")}

    try:
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        out2 = again.stdout + again.stderr
        assert again.returncode == 0, out2[-3000:]
        assert "marked 1 run(s) whose process had ended as Crashed" in out2
        # every artifact the first run committed is reused, whichever stage the kill landed in; what it
        # had not committed is computed now
        for key in committed_keys:
            assert f": Cached (artifact {key})" in out2, f"{key} was not reused:\n{out2[-3000:]}"
            assert f"wrote artifact {key}" not in out2, f"{key} was computed again:\n{out2[-3000:]}"
        assert "- sft: Cached" in out2, out2[-3000:]
        states = subprocess.run(
            [sys.executable, "-c", "from flows.service import server; server.apply_defaults(); server.connect()\n"
             "from prefect.client.orchestration import get_client\n"
             "with get_client(sync_client=True) as c:\n"
             "    print(sorted(r.state_name for r in c.read_flow_runs()))"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert states.stdout.strip() == "['Completed', 'Crashed']", states.stdout + states.stderr
    finally:
        subprocess.run([sys.executable, "-m", "flows.service.cli", "stop"], cwd=ROOT, env=env, capture_output=True)
