"""End to end, as a user drives it: `alignment serve` starts a real Prefect server and serves the
deployments (tiny recipe), `prefect deployment run` runs the flow and then `rerun-dpo`, and headless
Chromium opens the finished run's page in the UI and finds the artifacts (screenshot saved)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output"
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(home, tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("e2e")
    e = {**os.environ, "ALIGNMENT_STORE": str(tmp / "store"), "PREFECT_HOME": str(tmp / "prefect"),
         "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "results"), "ALIGNMENT_PREFECT_PORT": str(port),
         "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PYTHONUNBUFFERED": "1"}
    e["ALIGNMENT_HOME"] = str(home)
    from flows import server

    e["PREFECT_API_AUTH_STRING"] = server.credential()  # what the activated environment exports
    yield e
    subprocess.run([sys.executable, "-m", "flows.cli", "stop"], env=e, cwd=ROOT, capture_output=True)


def sh(args: list[str], env: dict, timeout: float = 300) -> str:
    p = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def headers(env: dict) -> dict[str, str]:
    """What a client of the locked API sends: the credential, and a CSRF token for POSTs."""
    from flows.server import basic_auth

    auth = basic_auth(env["PREFECT_API_AUTH_STRING"])
    token = httpx.get(env["PREFECT_API_URL"] + "/csrf-token", params={"client": "e2e"}, headers=auth, timeout=30)
    token.raise_for_status()
    return {**auth, "Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": "e2e"}


def api(env: dict, path: str, body: dict) -> list[dict]:
    r = httpx.post(env["PREFECT_API_URL"] + path, json=body, headers=headers(env), timeout=30)
    r.raise_for_status()
    return r.json()


def deployment_run(env: dict, name: str) -> str:
    prefect = str(Path(sys.executable).with_name("prefect"))
    out = sh([prefect, "--no-prompt", "deployment", "run", name, "--watch", "--watch-interval", "1"], env, 600)
    assert "Completed" in out, out[-2000:]
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def task_states(env: dict, flow_run_id: str) -> dict[str, str]:
    trs = api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {t["name"]: t["state"]["name"] for t in trs}


@pytest.fixture(scope="module")
def served_runs(env):
    out = sh([sys.executable, "-m", "flows.cli", "serve", "--recipe", "tiny"], env, 240)
    assert "Serving deployments" in out
    first = deployment_run(env, "sft-to-dpo/sft-to-dpo")
    rerun = deployment_run(env, "sft-to-dpo/rerun-dpo")
    return first, rerun


def test_served_deployment_runs_and_rerun_dpo_runs_only_dpo(env, served_runs):
    first, rerun = served_runs
    steps = ["respond_base", "sft", "respond_sft", "dpo", "respond_dpo", "calibrate", "evaluate"]
    assert task_states(env, first) == dict.fromkeys(steps, "Completed")
    assert task_states(env, rerun) == {**dict.fromkeys(steps, "Cached"),
                                       **dict.fromkeys(("dpo", "respond_dpo", "evaluate"), "Completed")}
    arts = api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [rerun]}}})
    assert {"sft-summary", "dpo-summary", "sft-to-dpo-responses"} <= {a["key"] for a in arts}
    status = sh([sys.executable, "-m", "flows.cli", "summary", first], env)
    assert f"/runs/flow-run/{first}" in status and "Held-out prompts" in status
    followed = sh([sys.executable, "-m", "flows.cli", "wait", rerun], env)
    assert ("Completed  respond_base: Cached  sft: Cached  respond_sft: Cached  dpo: Completed  "
            "respond_dpo: Completed  calibrate: Cached  evaluate: Completed") in followed


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI: .ci/run installs Debian's chromium")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    SHOTS.mkdir(exist_ok=True)
    return chromium


def login(page, ui: str, env: dict, shot: str | None = None) -> None:
    page.goto(f"{ui}/runs", wait_until="networkidle")
    password = page.locator("input[type=password]").first  # the locked API: the UI asks once
    password.wait_for(timeout=30_000)
    if shot:
        page.screenshot(path=str(SHOTS / shot), full_page=True)
    password.fill(env["PREFECT_API_AUTH_STRING"])
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Deployments", exact=True).first.wait_for(timeout=30_000)


def test_ui_shows_the_run_and_its_artifacts(env, served_runs):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    first, _ = served_runs
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        login(page, ui, env, shot="login.png")
        page.goto(f"{ui}/runs/flow-run/{first}", wait_until="networkidle")
        page.get_by_text("sft-to-dpo", exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "flow-run.png"), full_page=True)
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("sft-summary").first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "flow-run-artifacts.png"), full_page=True)
        text = page.inner_text("body")
        arts = {a["key"]: a["id"] for a in api(env, "/artifacts/filter",
                                                {"artifacts": {"flow_run_id": {"any_": [first]}}})}
        for key, expect in (("sft-to-dpo-results", "dpo_heldout_rewards_accuracies"),
                            ("dpo-curves", "rewards/margins"), ("sft-to-dpo-responses", "capital of France")):
            page.goto(f"{ui}/artifacts/artifact/{arts[key]}", wait_until="networkidle")
            page.get_by_text(expect, exact=False).first.wait_for(timeout=30_000)
            page.screenshot(path=str(SHOTS / f"{key}.png"), full_page=True)
            if key == "dpo-curves":
                assert page.locator("img[src^='data:image/png']").count() == 1, "the curves plot renders"
        browser.close()
    for key in ("sft-summary", "dpo-summary", "dpo-curves", "sft-to-dpo-responses"):
        assert key in text, f"{key} not on the run's Artifacts tab"
    assert (SHOTS / "flow-run-artifacts.png").stat().st_size > 10_000


def test_the_api_refuses_callers_without_the_credential(env, served_runs):
    """The locked API: no credential or a wrong one: 401; a POST without a CSRF token: 403; a web page on
    another origin gets no CORS permission; health stays open (probes)."""
    import base64

    url = env["PREFECT_API_URL"]
    assert httpx.post(f"{url}/flow_runs/filter", json={}, timeout=30).status_code in (401, 403)
    assert httpx.get(f"{url}/admin/version", timeout=30).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alignment:guess").decode()}
    assert httpx.get(f"{url}/admin/version", headers=wrong, timeout=30).status_code == 401
    auth = {"Authorization": headers(env)["Authorization"]}
    assert httpx.post(f"{url}/flow_runs/filter", json={}, headers=auth, timeout=30).status_code == 403, "CSRF"
    assert httpx.post(f"{url}/flow_runs/filter", json={}, headers=headers(env), timeout=30).status_code == 200
    evil = httpx.options(f"{url}/flow_runs/filter", timeout=30, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_deployment_parameters_may_not_turn_on_remote_code(env, served_runs):
    """Parameters come over the API: a run asking for `trust_remote_code` fails before any step, naming it."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    p = subprocess.run([prefect, "--no-prompt", "deployment", "run", "sft-to-dpo/sft-to-dpo", "-p",
                        'overrides={"model.trust_remote_code": true}', "--watch", "--watch-interval", "1"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", p.stdout + p.stderr).group(1)
    run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", headers=headers(env), timeout=30).json()
    assert run["state"]["name"] == "Failed" and "model.trust_remote_code = true" in run["state"]["message"]
    assert task_states(env, run_id) == {}, "refused before any step ran"


def flow_run_state(env: dict, run_id: str) -> dict:
    return httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", headers=headers(env), timeout=30).json()["state"]


def wait_for_state(env: dict, run_id: str, names: set[str], timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = flow_run_state(env, run_id)
        if state["name"] in names:
            return state
        assert state["type"] not in ("FAILED", "CRASHED", "CANCELLED"), state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not reach {names}: {state}")


def test_an_approval_gate_is_answered_in_the_ui_and_the_model_promoted(env, served_runs, home):
    """The served recipe has gates and `promote.approval`: the deployment run passes its gates and is
    suspended; a person signs in to the UI, presses Resume, ticks Approve, names themself, submits; the
    serve process runs it again (every step Cached) and `promote` records the release with that decision."""
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    assert "Serving deployments" in sh([sys.executable, "-m", "flows.cli", "serve", "--recipe", "tiny-release"], env, 240)
    prefect = str(Path(sys.executable).with_name("prefect"))
    out = sh([prefect, "--no-prompt", "deployment", "run", "sft-to-dpo/sft-to-dpo"], env, 120)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    # a deployment run waits *suspended*: its process has exited, the serve slot is free
    assert wait_for_state(env, run_id, {"Paused", "Suspended"})["name"] == "Suspended"
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        login(page, ui, env)
        page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
        page.get_by_role("button", name="Resume").first.click()
        modal = page.get_by_role("dialog")
        modal.get_by_text("Promote", exact=False).first.wait_for(timeout=30_000)

        def field(name: str):  # one property of the form Prefect renders from the `Approval` input's schema
            return modal.locator("div.schema-form-property").filter(
                has=page.locator(".schema-form-property__label", has_text=name))

        switch = field("Approve").get_by_role("switch")
        switch.click()
        assert switch.get_attribute("aria-checked") == "true"
        field("Reviewer").locator("textarea").fill("e2e-browser")
        field("Comment").locator("textarea").fill("gates passed, answers read")
        page.screenshot(path=str(SHOTS / "approval.png"), full_page=True)
        modal.get_by_role("button", name="Submit").click()
        modal.wait_for(state="hidden", timeout=30_000)  # the form was accepted
        browser.close()
    wait_for_state(env, run_id, {"Completed"})
    assert task_states(env, run_id)["promote"] == "Completed"
    record = json.loads((home / "releases" / "tiny-release" / "current.json").read_text())
    assert record["approval"] == {"approved": True, "reviewer": "e2e-browser", "comment": "gates passed, answers read"}
    assert [g["passed"] for g in record["gates"]] == [True, True]
    assert record["run"]["flow_run_id"] == run_id


def test_a_worker_runs_the_flows_from_a_work_pool(env, served_runs):
    """`alignment deploy --pool` ties the deployments to a `process` work pool; a real `prefect worker` on
    loopback picks the run up and runs it (every step from cache: the store is the one served runs filled)."""
    sh([sys.executable, "-c", "from flows import server; server.stop('serve')"], env)  # one runner per deployment
    out = sh([sys.executable, "-m", "flows.cli", "deploy", "--pool", "e2e-pool", "--recipe", "tiny"], env, 240)
    assert "deployed 8 deployments to pool 'e2e-pool'" in out
    prefect = str(Path(sys.executable).with_name("prefect"))
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker = subprocess.Popen([prefect, "worker", "start", "--pool", "e2e-pool", "--type", "process"], env=worker_env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run_id = deployment_run(env, "sft-to-dpo/sft-to-dpo")
        run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", headers=headers(env), timeout=30).json()
        assert run["work_pool_name"] == "e2e-pool" and run["state"]["name"] == "Completed"
        assert set(task_states(env, run_id).values()) == {"Cached"}
    finally:
        import signal

        for _ in range(2):  # the worker turns the first SIGTERM into a graceful shutdown
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            os.killpg(worker.pid, signal.SIGKILL)
