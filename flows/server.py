"""The local Prefect server and the serve process: start once in the background, reuse, stop.

Defaults (each honoured only when not already set in the environment): the API at
http://127.0.0.1:4200/api, ``PREFECT_HOME`` under ``$ALIGNMENT_HOME/prefect`` (SQLite), telemetry off.
A ``PREFECT_API_URL`` that points elsewhere is used as is and no server is started.

The local server is locked: it asks for a credential (HTTP basic, Prefect's ``PREFECT_SERVER_API_AUTH_STRING``)
made once at random and kept in ``$ALIGNMENT_HOME/run/api-auth`` (mode 0600); every client the project
starts or configures sends it (``PREFECT_API_AUTH_STRING``: the CLI, the serve process and its runs, and
`prefect` in the activated environment); the UI asks for it once (it is the password on its login page).
CSRF protection is on and CORS allows only the UI's own origin, so a web page cannot drive the API. A
port that answers without accepting the credential is not ours: `alignment serve` refuses it.
"""

import base64
import hashlib
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
from alignment.config.loader import recipe_path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 4200


def apply_defaults() -> dict[str, str]:
    """Set the project's Prefect defaults in os.environ (only where unset) and return them."""
    home = alignment_home()
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
    if _is_local(os.environ["PREFECT_API_URL"]):  # our own server: send our credential
        os.environ.setdefault("PREFECT_API_AUTH_STRING", credential())
    return {k: os.environ[k] for k in defaults}


def _is_local(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost")


def credential_path() -> Path:
    return _run_dir() / "api-auth"


def is_local_api() -> bool:
    """The configured API is the project's own local server (which asks for `credential()`)."""
    return _is_local(api_url())


def credential() -> str:
    """The local server's credential (`alignment:<random>`), made once, readable by its owner only."""
    path = credential_path()
    if not path.is_file():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"alignment:{secrets.token_urlsafe(24)}\n")
        except FileExistsError:  # another process made it first
            pass
    return path.read_text().strip()


def api_url() -> str:
    return apply_defaults()["PREFECT_API_URL"].rstrip("/")


def ui_url() -> str:
    return os.environ.get("PREFECT_UI_URL") or api_url().removesuffix("/api")


def probe(timeout: float = 2.0) -> str:
    """`ours` (a Prefect API that accepts our credential), `foreign` (one that answers but refuses it, or
    something else on the port) or `down` (nothing listening)."""
    from urllib.error import HTTPError
    from urllib.request import Request

    url = api_url()
    try:
        with urlopen(f"{url}/health", timeout=timeout) as r:
            if r.status != 200:
                return "foreign"
    except HTTPError:
        return "foreign"
    except (URLError, OSError, ValueError):
        parsed = urlparse(url)
        with socket.socket() as s:
            s.settimeout(timeout)
            held = s.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) == 0
        return "foreign" if held else "down"
    token = os.environ.get("PREFECT_API_AUTH_STRING") or credential()
    auth = basic_auth(token)
    try:
        with urlopen(Request(f"{url}/admin/version", headers=auth), timeout=timeout) as r:
            return "ours" if r.status == 200 else "foreign"
    except (URLError, OSError, ValueError):
        return "foreign"


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


def ensure_server(timeout: float = 90.0) -> str:
    """Start `prefect server start` on loopback, locked (see the module), unless ours already answers."""
    state = probe()
    if state == "ours":
        _mark_orphaned_runs()
        return api_url()
    parsed = urlparse(api_url())
    if not _is_local(api_url()):
        raise RuntimeError(f"PREFECT_API_URL={api_url()} does not answer with this project's credential, and it "
                           "is not a local server this tool may start; start it, set PREFECT_API_AUTH_STRING, or "
                           "unset PREFECT_API_URL")
    if state == "foreign":
        raise RuntimeError(f"port {parsed.port} on 127.0.0.1 is held by something that is not this project's "
                           f"locked Prefect server (it does not accept the credential in {_run_dir() / 'api-auth'}): "
                           "another user's server, an older unlocked one (`alignment stop`, or stop it by hand), or "
                           "another program. Stop it, or use another port: ALIGNMENT_PREFECT_PORT=4300")
    if _pid("server") is None:
        origin = f"http://127.0.0.1:{parsed.port or DEFAULT_PORT}"
        locked = {"PREFECT_SERVER_API_AUTH_STRING": credential(), "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
                  "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin, "PREFECT_SERVER_CORS_ALLOWED_METHODS": "*",
                  "PREFECT_SERVER_CORS_ALLOWED_HEADERS": "*"}
        _spawn("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(parsed.port or DEFAULT_PORT), "--analytics-off"], env=locked)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if healthy():
            _mark_orphaned_runs()
            return api_url()
        if _pid("server") is None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not come up within {timeout:.0f} s; see {_run_dir() / 'server.log'}")


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
    client's retries (about a minute for a refused connection), so a server that died is known at once."""
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
    headers = {}
    if auth:
        headers.update(basic_auth(auth))
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    if not url:
        return RuntimeError("no Prefect API configured")
    try:
        httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=timeout, verify=verify).raise_for_status()
    except httpx.HTTPError as e:
        return e
    return None


def _fingerprint(*recipes: str) -> str:
    """Recipes, flow code and the parameter policy: a change means the serve process must restart."""
    h = hashlib.sha256(b"".join(recipe_path(r).read_bytes() for r in recipes))
    h.update(os.environ.get("ALIGNMENT_ALLOW_UNSAFE_PARAMETERS", "0").encode())
    for p in sorted((ROOT / "flows").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure_serving(recipe: str = "sft-to-dpo", cai_recipe: str = "constitutional-ai", rlhf_recipe: str = "rlhf",
                   iterative_recipe: str = "iterative-dpo", timeout: float = 120.0) -> None:
    """Run `python -m flows.serve` in the background; restart it if a recipe or the flow code changed."""
    ensure_server()
    fp = _fingerprint(recipe, cai_recipe, rlhf_recipe, iterative_recipe)
    pid = _pid("serve")
    if pid is not None:
        if processes.record("serve")[1] == [fp]:
            return
        active = _active_runs()
        if active:
            raise RuntimeError(f"the serve process has {active} run(s) in progress and the recipes or flow code "
                               "changed; wait for them (`alignment wait`) or stop it (`alignment stop`), then serve")
        stop("serve")
    from flows.serve import deployments

    names = [f"{d.flow_name}/{d.name}" for d in deployments(recipe, cai_recipe, rlhf_recipe, iterative_recipe)]
    started = time.time()
    _spawn("serve", [sys.executable, "-m", "flows.serve", "--recipe", recipe, "--cai-recipe", cai_recipe,
                     "--rlhf-recipe", rlhf_recipe, "--iterative-recipe", iterative_recipe], extra=fp)
    while time.time() < started + timeout:
        if _pid("serve") is None:
            raise RuntimeError(f"the serve process exited; see {_run_dir() / 'serve.log'}")
        if _deployments_updated_since(started, names):
            return
        time.sleep(1.0)
    raise RuntimeError(f"deployments were not registered within {timeout:.0f} s; see {_run_dir() / 'serve.log'}")


def _deployments_updated_since(t: float, names: list[str]) -> bool:
    """Every one of `names` is registered (updated) since `t`: the serve process registers them one by
    one, and a `prefect deployment run` of one not yet there fails."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as c:
            for name in names:
                d = c.read_deployment_by_name(name)
                if d.updated is None or d.updated.timestamp() < t - 1:
                    return False
    except Exception:
        return False
    return True


def stop(name: str) -> bool:
    return processes.stop(name, grace=40.0 if name.startswith("vllm-") else 10.0)


def stop_all() -> dict[str, bool]:
    """`alignment stop`: the serve process first (its runs end), managed vLLM servers, then the server."""
    order = ["serve", *[n for n in processes.names() if n not in ("serve", "server")], "server"]
    return {name: stop(name) for name in order}


def _active_runs() -> int:
    """Flow runs of our flows that are running or about to (so the serve process must not restart)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as c:
            return len(c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])))))
    except Exception:  # noqa: BLE001 - no server to ask: nothing is running
        return 0


def status() -> dict[str, object]:
    return {"api": api_url(), "ui": ui_url(), "server_healthy": healthy(), "server_pid": _pid("server"),
            "serve_pid": _pid("serve"), "logs": str(_run_dir())}
