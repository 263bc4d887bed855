"""The trust boundary on this machine: a squatter on the server's port (a real process, answering 200 to
everything, as an unlocked Prefect server does) gets no credential from any client the project starts or
configures; a managed `vllm serve` is proven ours before its key is sent and never gets the user's key;
engine URLs carry no secrets. The allowlist is tests/test_policy.py; real served runs, PATCHes through the
API and a real worker are tests/test_e2e.py."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refusals import note

ROOT = Path(__file__).resolve().parent.parent

SQUATTER = r"""
import http.server, json, sys
log = open(sys.argv[2], "a")
class Everything(http.server.BaseHTTPRequestHandler):
    def answer(self):
        log.write(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}) + "\n")
        log.flush()
        body = b"true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Everything).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def squatter(tmp_path):
    """Another process listening on a loopback port, logging every request's Authorization header."""
    port, log = free_port(), tmp_path / "squatter.log"
    proc = subprocess.Popen([sys.executable, "-c", SQUATTER, str(port), str(log)])
    deadline = time.time() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    yield port, log, proc
    proc.kill()
    proc.wait()


def seen(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def cli_env(tmp_path, port: int) -> dict[str, str]:
    home = tmp_path / "home"
    env = {**os.environ, "ALIGNMENT_HOME": str(home), "ALIGNMENT_PREFECT_PORT": str(port),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_AUTH_STRING", None)
    return env


def test_a_squatter_on_the_port_gets_no_credential_from_any_client(tmp_path, squatter):
    """While our server is down another local process holds its port: `alignment serve`, `status`,
    `summary`, `wait`, `credential` and `prefect` in the activated shell all refuse, naming the port, and
    the squatter never sees an Authorization header (only unauthenticated /health probes)."""
    port, log, _ = squatter
    env = cli_env(tmp_path, port)
    (tmp_path / "home" / "run").mkdir(parents=True)
    (tmp_path / "home" / "run" / "api-auth").write_text("alignment:the-real-credential\n")  # as if made before
    os.chmod(tmp_path / "home" / "run" / "api-auth", 0o600)
    for args in (["serve", "--recipe", "tiny"], ["summary"], ["wait"], ["credential"], ["approve", "0" * 32]):
        p = subprocess.run([sys.executable, "-m", "flows.service.cli", *args], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode != 0, (args, p.stdout, p.stderr)
        assert f"port {port} on 127.0.0.1 is not this project's locked Prefect server" in p.stderr, (args, p.stderr)
        assert "credential was not sent to it" in p.stderr
    shell = subprocess.run(["bash", "-c", ". .venv/bin/activate && prefect deployment ls"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shell.returncode != 0 and "is not this project's locked Prefect server" in shell.stderr, shell.stderr
    requests = seen(log)
    assert requests, "the clients did probe the port"
    assert all(r["authorization"] is None for r in requests), requests
    assert {r["path"] for r in requests} <= {"/api/health"}, requests
    note("1", "a squatter answering 200 to everything on the server's port; `alignment serve` (also summary, wait, "
         "credential, approve, `prefect` in the activated shell)", f"{p.stderr.strip()} — the squatter saw "
         f"{len(requests)} requests, {sum(bool(r['authorization']) for r in requests)} with an Authorization header")


def test_our_own_process_on_the_port_must_still_refuse_a_wrong_credential(tmp_path, squatter):
    """The listener is the process our pid file names (as if an older unlocked server of ours): it is asked
    with a random wrong credential first, accepts it, and is refused; our credential never reaches it."""
    from alignment.processes import start_time

    port, log, proc = squatter
    env = cli_env(tmp_path, port)
    run = tmp_path / "home" / "run"
    run.mkdir(parents=True)
    (run / "server.pid").write_text(f"{proc.pid} {start_time(proc.pid)}")
    p = subprocess.run([sys.executable, "-m", "flows.service.cli", "serve", "--recipe", "tiny"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "accepted a wrong credential" in p.stderr and "an unlocked server" in p.stderr, p.stderr
    ours = (run / "api-auth").read_text().strip() if (run / "api-auth").is_file() else None
    sent = [r["authorization"] for r in seen(log) if r["authorization"]]
    assert sent, "the wrong credential was tried"
    import base64

    assert ours is None or all(base64.b64decode(h.split()[1]).decode() != ours for h in sent), sent
    note("1", "the squatter is the process our pid file names (an unlocked server of ours)", p.stderr.strip())


def test_a_run_notices_a_squatter_before_its_next_stage_and_sends_it_nothing(tmp_path, squatter):
    """The chain's check before every stage (`server.reachable`) in a process that holds our credential:
    the port is not our recorded server any more, so the check fails without a request carrying it."""
    port, log, _ = squatter
    env = {**cli_env(tmp_path, port), "PREFECT_API_AUTH_STRING": "alignment:the-real-credential"}
    p = subprocess.run([sys.executable, "-c", "from flows.service import server; server.apply_defaults(); "
                        "print(repr(server.reachable()))"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert "NotOurServer" in p.stdout and f"port {port}" in p.stdout, p.stdout + p.stderr
    assert seen(log) == [], "nothing was sent to the port at all"


def test_a_managed_vllm_server_is_proven_ours_before_its_key_is_sent(tmp_path, squatter, monkeypatch):
    """A managed `vllm serve` whose port was taken: `verify` refuses before any request carries the key
    (the squatter sees none); the engine sends the server's own random key, never the user's
    OPENAI_API_KEY, and the key is not on the server's command line."""
    from alignment.config import EngineKind, EngineSpec
    from alignment.generation.openai_engine import ManagedVLLMServer, OpenAIEngine, ServerError

    port, log, _ = squatter
    server = ManagedVLLMServer("/nonexistent", "policy", EngineSpec(kind=EngineKind.openai))
    server.port = port
    server.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # "our" server, not the listener
    try:
        with pytest.raises(ServerError, match=f"127.0.0.1:{port} is not the vllm serve this run started") as caught:
            server.verify()
    finally:
        server.proc.kill()
    assert seen(log) == []
    note("6", "a managed vllm serve's port held by another process", str(caught.value))
    assert server.key not in " ".join(server.command())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-own-key")
    engine = OpenAIEngine(server.base_url, "policy", tokenizer=None, spec=EngineSpec(kind=EngineKind.openai),
                          server=server)
    assert engine.client.headers["Authorization"] == f"Bearer {server.key}"
    given = OpenAIEngine("http://127.0.0.1:1/v1", "m", tokenizer=None, spec=EngineSpec(kind=EngineKind.openai))
    assert given.client.headers["Authorization"] == "Bearer sk-users-own-key", "a given endpoint gets the user's key"


def test_engine_urls_carry_no_credentials_and_no_queries():
    """A user:password, a query or a fragment in `engine.base_url` (where pasted keys end up) is refused,
    naming the fix, and the message shows the URL without them; so do a non-http URL and a bad port."""
    from pydantic import ValidationError

    from alignment.config import EngineSpec
    from alignment.config.loader import describe

    for url in ("https://user:s3cret@api.example.com/v1", "https://api.example.com/v1?api_key=s3cret",
                "https://api.example.com/v1#s3cret"):
        with pytest.raises(ValidationError, match="api_key_env") as e:
            EngineSpec(kind="openai", base_url=url)
        shown = describe(e.value, EngineSpec, "recipe.yaml")  # what the CLI prints
        assert "base_url = 'https://api.example.com/v1'" in shown and "s3cret" not in shown, shown
    with pytest.raises(ValidationError, match="not an http"):
        EngineSpec(kind="openai", base_url="file:///etc/passwd")
    with pytest.raises(ValidationError, match="out of range|Port"):
        EngineSpec(kind="openai", base_url="http://127.0.0.1:99999/v1")
    assert EngineSpec(kind="openai", base_url="http://127.0.0.1:8000/v1").base_url == "http://127.0.0.1:8000/v1"
