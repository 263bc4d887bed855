"""The local Prefect server and the serve process: start once in the background, reuse, stop.

Defaults (each honoured only when not already set in the environment): the API at
http://127.0.0.1:4200/api, ``PREFECT_HOME`` under ``$ALIGNMENT_HOME/prefect`` (SQLite), telemetry off.
A ``PREFECT_API_URL`` that points elsewhere (another host, or another local port) is used as is: no server is
started there and this project's credential is never sent to it.

The local server is locked: it asks for a credential (HTTP basic, Prefect's ``PREFECT_SERVER_API_AUTH_STRING``)
kept in ``$ALIGNMENT_HOME/run/api-auth`` (mode 0600) and made anew, at random, every time this module
starts the server (a credential that leaked while the server was down is worthless once it is back).
CSRF protection is on and CORS allows only the UI's own origin, so a web page cannot drive the API.

**The server is proven ours before the credential leaves the process** (`connect`, `probe`): the socket
listening on the port must belong to the server process we recorded (its pid and start time, or a child
of it; ``alignment.listeners``), and that process must refuse a wrong credential (an unlocked server
accepts anything). Only then does a client get the credential (``PREFECT_API_AUTH_STRING`` in its
environment). A port held by anything else, or by an unlocked server, is refused with a message that
names the port and the fix; nothing secret was sent to it.
"""

import base64
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

from alignment import processes
from alignment.artifacts import alignment_home

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_PORT = 4200


def apply_defaults() -> dict[str, str]:
    """Set the project's Prefect defaults in os.environ (only where unset) and return them."""
    home = alignment_home()
    try:  # Prefect makes PREFECT_HOME without its parents, and warns on every import when it cannot
        (home / "prefect").mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        pass  # an unwritable ALIGNMENT_HOME is reported where the store is first written
    port = os.environ.get("ALIGNMENT_PREFECT_PORT", str(DEFAULT_PORT))
    defaults = {
        "ALIGNMENT_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # seconds between serve polls (default 10): snappier runs
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        # 3 retries (2+4+8 s) instead of 5 (62 s) per API call: a busy loopback server still gets 14 s,
        # and a run whose server died ends in about a minute instead of five (tests/test_server_loss.py)
        "PREFECT_CLIENT_MAX_RETRIES": "3",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    url = urlparse(os.environ["PREFECT_API_URL"])
    if url.hostname == "localhost" and url.port == int(port):  # our server listens on 127.0.0.1 only; `localhost`
        # may resolve to ::1 first, where anyone can listen: always ask the address the server is proven on
        os.environ["PREFECT_API_URL"] = url._replace(netloc=f"127.0.0.1:{port}").geturl()
    return {k: os.environ[k] for k in defaults}


def _is_local(url: str) -> bool:
    """`url` is the project's own server: loopback, on the project's port (`ALIGNMENT_PREFECT_PORT`, 4200).
    Another local URL (a server of the user's own, a test harness) is used as is, like a remote one: never
    started, never proven, never sent this project's credential."""
    try:
        parsed = urlparse(url)
        return parsed.hostname == "127.0.0.1" and (parsed.port or 80) == _our_port()
    except ValueError:
        return False


def _our_port() -> int:
    return int(os.environ.get("ALIGNMENT_PREFECT_PORT", str(DEFAULT_PORT)))


def credential_path() -> Path:
    return _run_dir() / "api-auth"


def is_local_api() -> bool:
    """The configured API is the project's own local server (which asks for `credential()`; `_is_local`)."""
    return _is_local(api_url())


def credential() -> str:
    """The local server's credential (`alignment:<random>`), readable by its owner only; made when missing."""
    path = credential_path()
    if not path.is_file():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"alignment:{secrets.token_urlsafe(24)}\n")
        except FileExistsError:  # another process made it first
            pass
    return path.read_text().strip()


def _new_credential() -> str:
    """A fresh credential for a server about to start (written beside, then renamed over, the old one)."""
    tmp = credential_path().with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"alignment:{secrets.token_urlsafe(24)}\n")
    tmp.replace(credential_path())
    return credential()


def api_url() -> str:
    return apply_defaults()["PREFECT_API_URL"].rstrip("/")


def ui_url() -> str:
    return os.environ.get("PREFECT_UI_URL") or api_url().removesuffix("/api")


class NotOurServer(RuntimeError):
    """The port of the local API is held by something this project did not start, or by a server that
    does not ask for the credential: nothing secret is sent to it."""


def _port() -> int:
    return urlparse(api_url()).port or DEFAULT_PORT


def _status(path: str, headers: dict[str, str] | None, timeout: float) -> int | None:
    """The HTTP status of GET `path` on the local API (None: nothing answers)."""
    from urllib.error import HTTPError
    from urllib.request import Request

    try:
        with urlopen(Request(f"{api_url()}{path}", headers=headers or {}), timeout=timeout) as r:
            return r.status
    except HTTPError as e:
        return e.code
    except (URLError, OSError, ValueError):
        return None


def not_our_server(timeout: float = 2.0) -> str | None:
    """Why the local API's port is not our locked server (None: it is). The listener must be the server
    process we recorded (``alignment.listeners``) and must refuse a wrong credential; only a random wrong
    one is ever sent here."""
    from alignment.listeners import not_ours

    record = processes.record("server")
    pid = record[0] if record else None
    why = not_ours(_port(), pid, processes.start_time(pid) if pid else None)
    if why is not None:
        return why
    wrong = basic_auth(f"alignment:{secrets.token_urlsafe(24)}")
    answer = _status("/admin/version", wrong, timeout)
    if answer is None:
        return "our server process holds the port but does not answer yet"
    if answer != 401:
        return f"it accepted a wrong credential (HTTP {answer}): an unlocked server (started without the credential)"
    return None


def connect(timeout: float = 2.0) -> str:
    """Prove the local server is ours (see the module), then give this process (and the clients it starts)
    the credential; returns the API URL. An API elsewhere keeps its own settings."""
    url, active = api_url(), _active_api_url()
    if not _is_local(url) or active != url:  # elsewhere, or a server Prefect's settings chose (a test
        return active or url                 # harness): not ours to prove, and our credential is not for it
    why = not_our_server(timeout)
    if why == "nothing listens there":
        raise NotOurServer(f"the local Prefect server is not running (nothing listens on 127.0.0.1:{_port()}); "
                           "start it with `alignment serve` (or any `alignment run`)")
    if why is not None:
        raise NotOurServer(_refusal(why))
    os.environ["PREFECT_API_AUTH_STRING"] = credential()
    if "prefect.context" in sys.modules:  # Prefect read its settings at import: read them again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return url


def _active_api_url() -> str | None:
    """The API Prefect's clients in this process will call: its settings once Prefect is imported (a settings
    context may point elsewhere; None: an ephemeral server of Prefect's own), else the environment's."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return (PREFECT_API_URL.value() or "").rstrip("/") or None
    return api_url()


def _refusal(why: str) -> str:
    port = _port()
    return (f"port {port} on 127.0.0.1 is not this project's locked Prefect server ({why}); this project's "
            f"credential was not sent to it. Stop whatever holds it (`alignment stop` for an older server of ours; `ss -ltnp "
            f"'sport = :{port}'` shows the process), or use another port: ALIGNMENT_PREFECT_PORT={port + 100} "
            f"PREFECT_API_URL=http://127.0.0.1:{port + 100}/api")


def probe(timeout: float = 2.0) -> str:
    """`ours` (our recorded server process holds the port, refuses a wrong credential and accepts ours),
    `foreign` (anything else that listens there) or `down` (nothing listening). Our credential is sent
    only after the first two checks."""
    if _status("/health", None, timeout) is None:
        with socket.socket() as s:
            s.settimeout(timeout)
            held = s.connect_ex(("127.0.0.1", _port())) == 0
        if not held:
            return "down"
    if not _is_local(api_url()) or not_our_server(timeout) is not None:
        return "foreign"
    return "ours" if _status("/admin/version", basic_auth(credential()), timeout) == 200 else "foreign"


def basic_auth(credential: str) -> dict[str, str]:
    """The header a client of the locked API sends (what Prefect's client does with PREFECT_API_AUTH_STRING)."""
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


def healthy(timeout: float = 2.0) -> bool:
    return probe(timeout) == "ours"


def _run_dir() -> Path:
    return processes.run_dir()


def _pid(name: str) -> int | None:
    return processes.live_pid(name)


def _spawn(name: str, cmd: list[str], extra: str = "", env: dict[str, str] | None = None) -> int:
    log = open(_run_dir() / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})
    processes.pid_file(name, proc.pid, extra)
    return proc.pid


def _log_tail(name: str, lines: int = 12) -> str:
    """Where the log is, and its last lines (what a user reads first when a process exited)."""
    path = _run_dir() / f"{name}.log"
    try:
        tail = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        tail = []
    return f"see {path}" + (":\n  " + "\n  ".join(tail) if tail else "")


def ensure_server(timeout: float = 90.0) -> str:
    """Start `prefect server start` on loopback, locked (see the module), unless ours already answers;
    then `connect` to it."""
    if not _is_local(api_url()):
        try:
            if reachable(timeout=5.0) is None:
                _mark_orphaned_runs()  # runs of this home's processes there, killed meanwhile
                return api_url()
        except Exception:  # noqa: BLE001 - reported below
            pass
        raise RuntimeError(f"PREFECT_API_URL={api_url()} does not answer, and it is not a local server this tool "
                           "may start; start it, set PREFECT_API_AUTH_STRING or PREFECT_API_KEY, or unset "
                           "PREFECT_API_URL")
    import fcntl

    with open(_run_dir() / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two commands starting at once make one server and one credential
        return _start_or_join(timeout)


def _start_or_join(timeout: float) -> str:
    state = probe()
    if state == "ours":
        connect()
        _mark_orphaned_runs()
        return api_url()
    if state == "foreign":  # nothing secret was sent: refuse, naming the port and the fix
        raise NotOurServer(_refusal(not_our_server() or "it does not accept this project's credential"))
    if _pid("server") is None:  # down; a live recorded server is still starting: wait for it
        origin = f"http://127.0.0.1:{_port()}"
        fresh = _new_credential()  # the server's own services are clients of its API too
        locked = {"PREFECT_SERVER_API_AUTH_STRING": fresh, "PREFECT_API_AUTH_STRING": fresh,
                  "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
                  "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin, "PREFECT_SERVER_CORS_ALLOWED_METHODS": "*",
                  "PREFECT_SERVER_CORS_ALLOWED_HEADERS": "*"}
        _spawn("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(_port()), "--analytics-off"], env=locked)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if healthy():
            connect()
            _mark_orphaned_runs()
            return api_url()
        if _pid("server") is None:
            raise RuntimeError(f"the Prefect server exited while starting; {_log_tail('server')}")
        time.sleep(0.5)
    why = not_our_server()
    if why and "does not answer yet" not in why:
        raise NotOurServer(_refusal(why))
    raise RuntimeError(f"the Prefect server did not come up within {timeout:.0f} s; see {_run_dir() / 'server.log'}")


def watch(who: str, every_s: float = 1.0) -> None:
    """In a daemon thread of a long-lived client (the serve process, `alignment worker`), which polls the
    API with the credential every few seconds: the moment the port is no longer our recorded server
    process (it died, or something else holds the port), end this process, before its next poll. Its
    flow-run children may still send a few log lines until their next stage's check; a restarted server
    has a new credential, so what they sent is worthless by then."""
    import threading

    from alignment.listeners import not_ours

    def run() -> None:
        while True:
            record = processes.record("server")
            pid = record[0] if record else None
            why = not_ours(_port(), pid, processes.start_time(pid) if pid else None)
            if why is not None:
                print(f"{who}: the Prefect server on port {_port()} is gone or not ours any more ({why}); stopping",
                      file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(every_s)

    threading.Thread(target=run, daemon=True, name="watch-server").start()


def register_flow_run(flow_run_id: str) -> None:
    """Note that this process runs `flow_run_id` (its pid and start time under ``run/flow-runs``): when the
    server dies mid-run, the run's process ends without being able to say so, and the server comes back
    with the run still `Running`; `ensure_server` then marks it `Crashed` (`_mark_orphaned_runs`)."""
    runs = _run_dir() / "flow-runs"
    runs.mkdir(exist_ok=True)  # the host too: a shared $ALIGNMENT_HOME must not judge another machine's pids
    (runs / f"{flow_run_id}.pid").write_text(f"{os.getpid()} {processes.start_time(os.getpid())} {socket.gethostname()}")


def _mark_orphaned_runs() -> list[str]:
    """Mark `Crashed` every registered run whose process is gone while the server still shows it running;
    forget the ones that ended. Returns the names marked (also printed on stderr)."""
    runs = _run_dir() / "flow-runs"
    gone = []
    for path in sorted(runs.glob("*.pid")) if runs.is_dir() else []:
        try:
            pid, started, host = (path.read_text().split() + [socket.gethostname()])[:3]
            if host != socket.gethostname():
                continue  # another machine's run: not ours to judge
            alive = processes.start_time(int(pid)) == started
        except (OSError, ValueError):
            alive = False
        if not alive:
            gone.append(path)
    if not gone:
        return []
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    from prefect.states import Crashed

    marked = []
    try:
        with get_client(sync_client=True) as c:
            for path in gone:
                try:
                    run = c.read_flow_run(path.stem)
                    if run.state is not None and not run.state.is_final():
                        c.set_flow_run_state(run.id, Crashed(message=(
                            "its process ended while it was running (the Prefect server or the process was "
                            "stopped or killed); the stages it finished are committed in the store and a rerun "
                            "reuses them")), force=True)
                        marked.append(run.name)
                except (ObjectNotFound, ValueError, PrefectHTTPStatusError):  # another server's run, not a run id
                    pass
                path.unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - bookkeeping must never keep the server from being used
        print(f"warning: could not check for runs left Running by a crash: {e}", file=sys.stderr)
    if marked:
        print(f"marked {len(marked)} run(s) whose process had ended as Crashed: {', '.join(marked)}",
              file=sys.stderr)
    return marked


def reachable(timeout: float = 10.0) -> Exception | None:
    """None when the Prefect API this process talks to (the active settings: ours, another server, Prefect
    Cloud, a test harness) answers `/health`; else the error. One plain request, none of the Prefect
    client's retries (about a minute for a refused connection), so a server that died is known at once.
    A loopback API this process holds a credential for must still be our recorded server process (the
    listener proof, no request needed): a port taken over after our server died is refused before this
    process's clients send it anything more. `/health` is open, so it is asked without the credential."""
    import httpx
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    def plain(secret) -> str:  # a str or a pydantic SecretStr, by Prefect version
        return secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret or "")

    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    url, auth, key = PREFECT_API_URL.value(), plain(PREFECT_API_AUTH_STRING.value()), plain(PREFECT_API_KEY.value())
    verify: bool | ssl.SSLContext = True  # Prefect's TLS settings, for an https server with a private CA
    if (url or "").startswith("https:"):
        cert = PREFECT_API_SSL_CERT_FILE.value()
        verify = False if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value() else (
            ssl.create_default_context(cafile=cert) if cert else True)
    if not url:
        return RuntimeError("no Prefect API configured")
    headers = {}
    if _is_local(url):
        if auth:
            from alignment.listeners import not_ours

            record = processes.record("server")
            pid = record[0] if record else None
            why = not_ours(urlparse(url).port or DEFAULT_PORT, pid, processes.start_time(pid) if pid else None)
            if why is not None:
                return NotOurServer(_refusal(why))
    elif auth:
        headers.update(basic_auth(auth))
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=timeout, verify=verify).raise_for_status()
    except httpx.HTTPError as e:
        return e
    return None


def stop(name: str) -> bool:
    return processes.stop(name, grace=40.0 if name.startswith("vllm-") else 10.0)


def stop_all() -> dict[str, bool]:
    """`alignment stop`: the serve process first (its runs end), managed vLLM servers, then the server."""
    order = ["serve", *[n for n in processes.names() if n not in ("serve", "server")], "server"]
    return {name: stop(name) for name in order}


def status() -> dict[str, object]:
    return {"api": api_url(), "ui": ui_url(), "server_healthy": healthy(), "server_pid": _pid("server"),
            "serve_pid": _pid("serve"), "logs": str(_run_dir())}
