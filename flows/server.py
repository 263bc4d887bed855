"""The local Prefect server and the serve process: start once in the background, reuse, stop.

Defaults (each honoured only when not already set in the environment): the API at
http://127.0.0.1:4200/api, ``PREFECT_HOME`` under ``$ALIGNMENT_HOME/prefect`` (SQLite), telemetry off.
A ``PREFECT_API_URL`` that points elsewhere is used as is and no server is started.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

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
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in defaults}


def api_url() -> str:
    return apply_defaults()["PREFECT_API_URL"].rstrip("/")


def ui_url() -> str:
    return os.environ.get("PREFECT_UI_URL") or api_url().removesuffix("/api")


def healthy(timeout: float = 2.0) -> bool:
    try:
        with urlopen(f"{api_url()}/health", timeout=timeout) as r:
            return r.status == 200
    except (URLError, OSError, ValueError):
        return False


def _run_dir() -> Path:
    d = alignment_home() / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pid(name: str) -> int | None:
    f = _run_dir() / f"{name}.pid"
    if not f.is_file():
        return None
    pid = int(f.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        f.unlink(missing_ok=True)
        return None
    return pid


def _spawn(name: str, cmd: list[str], extra: str = "") -> int:
    log = open(_run_dir() / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=os.environ.copy())
    (_run_dir() / f"{name}.pid").write_text(f"{proc.pid} {extra}".strip())
    return proc.pid


def ensure_server(timeout: float = 90.0) -> str:
    """Start `prefect server start` on loopback unless the configured API already answers."""
    if healthy():
        return api_url()
    parsed = urlparse(api_url())
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise RuntimeError(f"PREFECT_API_URL={api_url()} does not answer, and it is not a local server this "
                           "tool may start; start it or unset PREFECT_API_URL")
    if _pid("server") is None:
        _spawn("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(parsed.port or DEFAULT_PORT), "--analytics-off"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        if healthy():
            return api_url()
        if _pid("server") is None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not come up within {timeout:.0f} s; see {_run_dir() / 'server.log'}")


def _fingerprint(*recipes: str) -> str:
    """Recipes and flow code: a change means the serve process must register deployments again."""
    h = hashlib.sha256(b"".join(recipe_path(r).read_bytes() for r in recipes))
    for p in sorted((ROOT / "flows").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure_serving(recipe: str = "sft-to-dpo", cai_recipe: str = "constitutional-ai", rlhf_recipe: str = "rlhf",
                   timeout: float = 120.0) -> None:
    """Run `python -m flows.serve` in the background; restart it if a recipe or the flow code changed."""
    ensure_server()
    fp = _fingerprint(recipe, cai_recipe, rlhf_recipe)
    pid = _pid("serve")
    if pid is not None:
        current = (_run_dir() / "serve.pid").read_text().split()[1:]
        if current == [fp]:
            return
        stop("serve")
    from flows.serve import deployments

    names = [f"{d.flow_name}/{d.name}" for d in deployments(recipe, cai_recipe, rlhf_recipe)]
    started = time.time()
    _spawn("serve", [sys.executable, "-m", "flows.serve", "--recipe", recipe, "--cai-recipe", cai_recipe,
                     "--rlhf-recipe", rlhf_recipe], extra=fp)
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
    pid = _pid(name)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    (_run_dir() / f"{name}.pid").unlink(missing_ok=True)
    return True


def status() -> dict[str, object]:
    return {"api": api_url(), "ui": ui_url(), "server_healthy": healthy(), "server_pid": _pid("server"),
            "serve_pid": _pid("serve"), "logs": str(_run_dir())}
