"""End to end, as a user drives it: `alignment serve` starts a real Prefect server and serves the
deployments (tiny recipe), `prefect deployment run` runs the flow and then `rerun-dpo`, and headless
Chromium opens the finished run's page in the UI and finds the artifacts (screenshot saved). Then what
a holder of the API credential tries (the security review's findings, each through the real API): a
PATCHed deployment, a run with its own job variables, overrides that would re-point the gates, a model
changed while its approval waits, and a work pool whose template and deployment are PATCHed under a
real `alignment worker`."""

import copy
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
from refusals import note

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
    e.pop("PREFECT_API_AUTH_STRING", None)  # `served_runs` sets it once the server is up and proven
    yield e
    subprocess.run([sys.executable, "-m", "flows.service.cli", "stop"], env=e, cwd=ROOT, capture_output=True)


def sh(args: list[str], env: dict, timeout: float = 300) -> str:
    p = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def headers(env: dict) -> dict[str, str]:
    """What a client of the locked API sends: the credential, and a CSRF token for POSTs."""
    from flows.service.server import basic_auth

    auth = basic_auth(env["PREFECT_API_AUTH_STRING"])
    token = httpx.get(env["PREFECT_API_URL"] + "/csrf-token", params={"client": "e2e"}, headers=auth, timeout=30)
    token.raise_for_status()
    return {**auth, "Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": "e2e"}


def api(env: dict, path: str, body: dict, method: str = "POST"):
    for attempt in range(6):  # SQLite busy under the serve process's polling: 503, which Prefect's client retries too
        r = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, headers=headers(env), timeout=30)
        if r.status_code != 503:
            break
        time.sleep(0.5 * 2**attempt)
    r.raise_for_status()
    return r.json() if r.content else None


def get(env: dict, path: str):
    r = httpx.get(env["PREFECT_API_URL"] + path, headers=headers(env), timeout=30)
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
    out = sh([sys.executable, "-m", "flows.service.cli", "serve", "--recipe", "tiny"], env, 240)
    assert "Serving deployments" in out
    # what the activated shell's `prefect` gets for each command: the credential of the proven server
    cred = subprocess.run([sys.executable, "-m", "flows.service.cli", "credential"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert cred.returncode == 0 and cred.stdout.startswith("alignment:"), cred.stderr
    env["PREFECT_API_AUTH_STRING"] = cred.stdout.strip()
    first = deployment_run(env, "sft-to-dpo/sft-to-dpo")
    rerun = deployment_run(env, "sft-to-dpo/rerun-dpo")
    return first, rerun


def test_served_deployment_runs_and_rerun_dpo_runs_only_dpo(env, served_runs):
    first, rerun = served_runs
    steps = ["respond_base", "sft", "respond_sft", "dpo", "respond_dpo", "calibrate", "evaluate", "benchmark_base",
             "benchmark_sft", "benchmark_dpo", "tax"]
    assert task_states(env, first) == dict.fromkeys(steps, "Completed")
    assert task_states(env, rerun) == {**dict.fromkeys(steps, "Cached"), **dict.fromkeys(
        ("dpo", "respond_dpo", "evaluate", "benchmark_dpo", "tax"), "Completed")}
    arts = api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [rerun]}}})
    assert {"sft-summary", "dpo-summary", "sft-to-dpo-responses"} <= {a["key"] for a in arts}
    status = sh([sys.executable, "-m", "flows.service.cli", "summary", first], env)
    assert f"/runs/flow-run/{first}" in status and "Held-out prompts" in status
    followed = sh([sys.executable, "-m", "flows.service.cli", "wait", rerun], env)
    assert ("Completed  respond_base: Cached  sft: Cached  respond_sft: Cached  dpo: Completed  "
            "respond_dpo: Completed  calibrate: Cached  evaluate: Completed  benchmark_base: Cached  "
            "benchmark_sft: Cached  benchmark_dpo: Completed  tax: Completed") in followed
    assert "Capability benchmark and alignment tax" in status, "the summary prints the tax table"


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
    assert run["state"]["name"] == "Failed" and "model.trust_remote_code = True (served: False)" in run["state"]["message"]
    assert task_states(env, run_id) == {}, "refused before any step ran"


def final_state(env: dict, run_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = get(env, f"/flow_runs/{run_id}")["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not end: {state}")


def test_a_deployment_patched_through_the_api_is_not_what_was_served(env, served_runs):
    """Finding 3: one PATCH makes hostile values the deployment's own parameters in the API; the run is
    judged by the record the serve process wrote when it loaded the recipe, and refused before any step."""
    dep = get(env, "/deployments/name/sft-to-dpo/sft-to-dpo")
    hostile = copy.deepcopy(dep["parameters"])
    hostile["recipe"]["model"]["trust_remote_code"] = True
    hostile["recipe"]["sft"]["data"]["path"] = "someone/elses-data"
    api(env, f"/deployments/{dep['id']}", {"parameters": hostile}, method="PATCH")
    try:
        assert get(env, f"/deployments/{dep['id']}")["parameters"]["recipe"]["model"]["trust_remote_code"] is True
        run = api(env, f"/deployments/{dep['id']}/create_flow_run", {})
        state = final_state(env, run["id"])
    finally:
        api(env, f"/deployments/{dep['id']}", {"parameters": dep["parameters"]}, method="PATCH")
    assert state["name"] == "Failed", state
    assert "model.trust_remote_code = True (served: False)" in state["message"], state["message"]
    assert "sft.data.path = 'someone/elses-data'" in state["message"]
    note("3", "PATCH /deployments/{id} parameters (trust_remote_code, hub data), then a run of it", state["message"])
    assert task_states(env, run["id"]) == {}, "refused before any step ran"


def test_a_run_may_not_bring_its_own_job_variables(env, served_runs):
    """Finding 2 for served runs: job variables (an environment that would lift the policy or move the
    store) are refused, whatever they say."""
    dep = get(env, "/deployments/name/sft-to-dpo/sft-to-dpo")
    run = api(env, f"/deployments/{dep['id']}/create_flow_run", {"job_variables": {"env": {
        "ALIGNMENT_ALLOW_UNSAFE_PARAMETERS": "1", "ALIGNMENT_HOME": "/"}}})
    state = final_state(env, run["id"])
    assert state["name"] == "Failed" and "job_variables = ['env']" in state["message"], state
    assert task_states(env, run["id"]) == {}
    note("2", "served run created with job_variables env ALIGNMENT_ALLOW_UNSAFE_PARAMETERS=1, ALIGNMENT_HOME=/",
         state["message"])


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

    assert "Serving deployments" in sh([sys.executable, "-m", "flows.service.cli", "serve", "--recipe", "tiny-release"], env, 240)
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
    assert record["approval"] == {"approved": True, "reviewer": "e2e-browser", "comment": "gates passed, answers read",
                                  "artifact_id": record["artifact_id"], "gates_sha256": record["approval"]["gates_sha256"]}
    assert [g["passed"] for g in record["gates"]] == [True, True, True]
    assert record["run"]["flow_run_id"] == run_id


def test_overrides_that_would_re_point_the_gates_are_refused(env, served_runs):
    """Finding 4 on the served `tiny-release` (2 gates, approval): someone else's training data, the benign
    set as the red-team set, no judge, 4,096 processes, 10^12 steps: refused, each named, before any step."""
    assert "Serving deployments" in sh([sys.executable, "-m", "flows.service.cli", "serve", "--recipe", "tiny-release"], env, 240)
    hostile = {"sft.data.path": "someone/elses-data", "evaluate.redteam_prompts.path": "data/benign_prompts.jsonl",
               "evaluate.judge": None, "launch": {"num_processes": 4096}, "sft.train.max_steps": 10**12}
    prefect = str(Path(sys.executable).with_name("prefect"))
    out = sh([prefect, "--no-prompt", "deployment", "run", "sft-to-dpo/sft-to-dpo", "-p",
              f"overrides={json.dumps(hostile)}"], env, 120)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    state = final_state(env, run_id)
    assert state["name"] == "Failed", state
    for named in ("sft.data.path = 'someone/elses-data'", "evaluate.redteam_prompts.path", "evaluate.judge = None",
                  "launch = '<section>' (served: None)", "sft.train.max_steps = 1000000000000"):
        assert named in state["message"], (named, state["message"])
    assert task_states(env, run_id) == {}
    note("4", f"tiny-release run with overrides {json.dumps(hostile)}", state["message"])


def approval_asked(env: dict, run_id: str) -> str:
    """The artifact id the run's latest approval request names."""
    arts = api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]},
                                                        "key": {"any_": ["sft-to-dpo-approval"]}}})
    latest = max(arts, key=lambda a: a["created"])
    return re.search(r"Model: `(dpo/[0-9a-f]+)`", latest["data"]).group(1)


def test_an_approval_releases_only_the_model_it_was_asked_about(env, served_runs, home):
    """Finding 5: while a run waits for approval its parameters are PATCHed (another DPO beta: another
    model). The approval given for the first model does not release the second: the resumed run computes
    the new model and asks again; only the second answer, about that model, releases it."""
    assert "Serving deployments" in sh([sys.executable, "-m", "flows.service.cli", "serve", "--recipe", "tiny-release"], env, 240)
    prefect = str(Path(sys.executable).with_name("prefect"))
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", sh([prefect, "--no-prompt", "deployment", "run",
                                                     "sft-to-dpo/sft-to-dpo"], env, 120)).group(1)
    assert wait_for_state(env, run_id, {"Suspended"})["name"] == "Suspended"
    first = approval_asked(env, run_id)
    params = get(env, f"/flow_runs/{run_id}")["parameters"]
    api(env, f"/flow_runs/{run_id}", {"parameters": {**params, "overrides": {"dpo.beta": 0.35}}}, method="PATCH")
    sh([sys.executable, "-m", "flows.service.cli", "approve", run_id, "--reviewer", "first", "--comment", "model A"], env)
    deadline = time.time() + 300
    while time.time() < deadline:  # resumed, recomputed DPO, and asked about the new model
        if flow_run_state(env, run_id)["name"] == "Suspended" and approval_asked(env, run_id) != first:
            break
        assert flow_run_state(env, run_id)["type"] not in ("FAILED", "CRASHED", "COMPLETED"), flow_run_state(env, run_id)
        time.sleep(1)
    second = approval_asked(env, run_id)
    assert second != first, "a changed model is a new question"
    sh([sys.executable, "-m", "flows.service.cli", "approve", run_id, "--reviewer", "second", "--comment", "model B"], env)
    wait_for_state(env, run_id, {"Completed"})
    record = json.loads((home / "releases" / "tiny-release" / "current.json").read_text())
    assert record["run"]["flow_run_id"] == run_id
    assert record["artifact_id"] == second and record["approval"]["artifact_id"] == second
    assert record["approval"]["reviewer"] == "second"
    note("5", "flow run parameters PATCHed (dpo.beta) while suspended, then approved",
         f"asked about {first}, resumed and asked again about {second}; released {record['artifact_id']} "
         f"v{record['version']} on the second answer only")


def test_a_worker_runs_only_what_was_deployed(env, served_runs, tmp_path):
    """Finding 2 for pools: `alignment deploy` makes the pool's template literal and records what it
    deployed; a real `alignment worker` runs the flow (every step from cache) although the pool's template
    was PATCHed to another command; a run with job variables, and a deployment whose entrypoint and pull
    steps were PATCHed (a shell step that would write a file), are refused before any flow code runs."""
    sh([sys.executable, "-c", "from flows.service import server; server.stop('serve')"], env)  # one runner per deployment
    out = sh([sys.executable, "-m", "flows.service.cli", "deploy", "--pool", "e2e-pool", "--recipe", "tiny"], env, 240)
    assert "deployed 12 deployments to pool 'e2e-pool'" in out
    pool = get(env, "/work_pools/e2e-pool")
    job = pool["base_job_template"]["job_configuration"]
    assert "flows.service.pool_run" in job["command"] and job["working_dir"] == str(ROOT)
    assert "{{" not in json.dumps(job["env"]) and not {"env", "command", "working_dir"} & set(
        pool["base_job_template"]["variables"]["properties"]), "nothing for a job variable to fill in"
    marker = tmp_path / "pwned"
    patched = copy.deepcopy(pool["base_job_template"])
    patched["job_configuration"]["command"] = f"touch {marker}"
    api(env, "/work_pools/e2e-pool", {"base_job_template": patched}, method="PATCH")
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker_env.pop("PREFECT_API_AUTH_STRING")  # the worker proves the server itself
    worker = subprocess.Popen([sys.executable, "-m", "flows.service.cli", "worker", "--pool", "e2e-pool"], env=worker_env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run_id = deployment_run(env, "sft-to-dpo/sft-to-dpo")
        run = get(env, f"/flow_runs/{run_id}")
        assert run["work_pool_name"] == "e2e-pool" and run["state"]["name"] == "Completed"
        assert set(task_states(env, run_id).values()) == {"Cached"}
        assert not marker.exists(), "the worker ran its own command, not the pool's"

        dep = get(env, "/deployments/name/sft-to-dpo/sft-to-dpo")
        with_vars = api(env, f"/deployments/{dep['id']}/create_flow_run",
                        {"job_variables": {"env": {"ALIGNMENT_ALLOW_UNSAFE_PARAMETERS": "1"}}})
        state = final_state(env, with_vars["id"])
        assert state["name"] == "Failed" and "job_variables" in state["message"], state
        assert task_states(env, with_vars["id"]) == {}
        note("2", "pool template command PATCHed to `touch`: the run", "Completed, every step Cached; the touch never ran")
        note("2", "pool run created with job_variables (alignment worker)", state["message"])

        api(env, f"/deployments/{dep['id']}", {"entrypoint": "flows/service/cli.py:main", "pull_steps": [
            {"prefect.deployments.steps.run_shell_script": {"script": f"touch {marker}"}}]}, method="PATCH")
        repointed = api(env, f"/deployments/{dep['id']}/create_flow_run", {})
        state = final_state(env, repointed["id"])
        assert state["name"] == "Failed", state
        assert "entrypoint differs" in state["message"] and "pull_steps differs" in state["message"], state["message"]
        assert not marker.exists(), "the pull step never ran"
        assert task_states(env, repointed["id"]) == {}
        note("2", "PATCH /deployments/{id} entrypoint flows/service/cli.py:main + run_shell_script pull step", state["message"])
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
