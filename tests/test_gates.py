"""Gates, approval and promotion on the tiny sft-to-dpo recipe through Prefect's test harness: a failing
gate stops the flow right after its step with a gate report; a passing one lets the run promote; an
unmeasured metric never passes; the approval pause waits for a person (rejected: nothing promoted;
approved from `alignment approve`: released, with the decision in the record); deployment parameters may
not loosen gates or skip the approval."""

import json
import threading
import time

import pytest
from prefect_api import artifacts, task_states

from alignment.config import GateCondition, ModelSpec


def cond(**kw) -> GateCondition:
    return GateCondition(**{"step": "evaluate", "op": ">=", "value": 0.0, **kw})


def test_a_condition_reads_its_metric_a_difference_and_never_passes_unmeasured():
    from alignment.gates import evaluate

    metrics = {"win_rate": 0.7, "policy_rate": 0.30, "reference_rate": 0.20, "judged": False,
               "judged_note": "judge at chance", "skipped": None}
    assert evaluate(cond(metric="win_rate", value=0.6), metrics)["passed"]
    assert not evaluate(cond(metric="win_rate", op=">", value=0.7), metrics)["passed"]
    worse = evaluate(cond(metric="policy_rate", minus="reference_rate", op="<=", value=0.05), metrics)
    assert not worse["passed"] and worse["value"] == pytest.approx(0.10)
    assert "is not <= 0.05" in worse["why"] and "policy_rate − reference_rate" in worse["condition"]
    missing = evaluate(cond(metric="win_rat"), metrics)
    assert not missing["passed"] and "no metric 'win_rat'" in missing["why"] and "win_rate" in missing["why"]
    assert "not computed" in evaluate(cond(metric="skipped"), metrics)["why"]
    assert not evaluate(cond(metric="judged"), metrics)["passed"], "a bool is not a measurement"
    assert "did not run" in evaluate(cond(metric="win_rate"), None)["why"]


@pytest.fixture(scope="module")
def recipe(prefect_harness, tmp_path_factory, tiny_recipe):
    import os

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("gates") / "store")
    try:
        yield tiny_recipe
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def run(recipe, overrides):
    from flows.sft_to_dpo import sft_to_dpo

    state = sft_to_dpo(recipe=recipe, overrides=overrides, return_state=True)
    return state, str(state.state_details.flow_run_id)


def test_a_failing_gate_stops_the_flow_after_its_step_with_a_report(recipe):
    state, fr = run(recipe, {"gates": [{"step": "sft", "metric": "train_loss", "op": "<", "value": 100},
                                       {"step": "dpo", "metric": "train_pairs", "op": ">", "value": 1000}]})
    assert state.is_failed()
    assert "dpo: train_pairs > 1000" in state.message and "16 is not > 1000" in state.message
    states = task_states(fr)
    assert states["dpo"] == "Completed" and "respond_dpo" not in states, "stopped right after the gated step"
    arts = artifacts(fr)
    report = arts["sft-to-dpo-gates"].data
    assert "FAILED" in report and "| ✅ | `sft: train_loss < 100`" in report and "| ❌ | `dpo: train_pairs > 1000`" in report
    assert "dpo-summary" in arts, "the steps that ran are still inspectable"


def test_a_gate_on_a_step_the_recipe_lacks_is_refused_before_any_step(recipe):
    state, fr = run(recipe, {"gates": [{"step": "ppo", "metric": "kl", "op": "<", "value": 1}]})
    assert state.is_failed() and "gates[0].step: 'ppo' is not a step of this recipe" in state.message
    assert task_states(fr) == {}


def test_passing_gates_promote_and_every_release_is_a_new_version(recipe, home):
    overrides = {"gates": [{"step": "dpo", "metric": "train_pairs", "op": ">=", "value": 8}],
                 "promote": {"approval": False, "name": "gates-test"}}
    state, fr = run(recipe, overrides)
    assert state.is_completed(), state.message
    out = state.result()
    release = out["release"]
    assert release["promoted"] and release["version"] == 1
    assert release["artifact_id"] == f"dpo/{out['stages']['dpo']['key']}"
    record = json.loads((home / "releases" / "gates-test" / "v1.json").read_text())
    assert record["gates"][0]["passed"] and record["approval"] is None and record["files"]
    assert task_states(fr)["promote"] == "Completed"
    assert "sft-to-dpo-release" in artifacts(fr) and "| ✅ |" in artifacts(fr)["sft-to-dpo-gates"].data
    state, _ = run(recipe, overrides)
    assert state.result()["release"]["version"] == 2
    assert json.loads((home / "releases" / "gates-test" / "v1.json").read_text()) == record, "never overwritten"


def answer_when_paused(args: list[str]) -> threading.Thread:
    """In the background: wait for a paused flow run, then answer it with `alignment approve ARGS`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    def paused_runs():
        with get_client(sync_client=True) as c:
            return c.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))

    before = {r.id for r in paused_runs()}  # not ours: an earlier run left waiting

    def answer():
        deadline = time.time() + 300
        while time.time() < deadline:
            paused = [r for r in paused_runs() if r.id not in before]
            if paused:
                from flows.service.cli import build_parser

                parsed = build_parser().parse_args(["approve", str(paused[0].id), *args])
                parsed.fn(parsed)  # `alignment approve` without main(): main() points Prefect at the default server
                return
            time.sleep(0.5)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return t


def test_the_approval_gate_waits_for_a_person(recipe, home):
    overrides = {"promote": {"approval": True, "name": "approval-test", "timeout_s": 300}}
    answering = answer_when_paused(["--reject", "--reviewer", "ana", "--comment", "too short"])
    state, fr = run(recipe, overrides)
    answering.join(timeout=10)
    assert state.is_completed(), state.message
    rejected = state.result()["release"]
    assert {k: rejected[k] for k in ("promoted", "approved", "reviewer", "comment")} == {
        "promoted": False, "approved": False, "reviewer": "ana", "comment": "too short"}
    assert rejected["artifact_id"].startswith("dpo/")
    assert not (home / "releases" / "approval-test").exists() and "promote" not in task_states(fr)
    assert "Rejected by ana" in artifacts(fr)["sft-to-dpo-release"].data
    assert "approve" in artifacts(fr)["sft-to-dpo-approval"].data

    answering = answer_when_paused(["--reviewer", "bo", "--comment", "looks fine"])
    state, fr = run(recipe, overrides)
    answering.join(timeout=10)
    release = state.result()["release"]
    assert release["promoted"] and {k: release["approval"][k] for k in ("approved", "reviewer", "comment")} == {
        "approved": True, "reviewer": "bo", "comment": "looks fine"}
    assert release["approval"]["artifact_id"] == release["artifact_id"], "the approval names what it released"
    assert json.loads((home / "releases" / "approval-test" / "current.json").read_text())["version"] == 1


def test_an_approval_is_bound_to_the_artifact_and_the_gate_results(built_dpo):
    """The approval's key names what is approved: another artifact, or other gate numbers, is another
    question (an answer stored for model A is never returned for model B)."""
    from alignment.config import ModelSpec
    from alignment.gates import GateCheck
    from flows.release import approval_question

    gates = GateCheck([])
    gates.results = [{"condition": "dpo: train_pairs >= 8", "value": 16.0, "passed": True}]
    key, subject = approval_question(ModelSpec(name=built_dpo["a"]), gates)
    other, other_subject = approval_question(ModelSpec(name=built_dpo["b"]), gates)
    assert key != other and subject["artifact_id"] != other_subject["artifact_id"]
    gates.results = [{"condition": "dpo: train_pairs >= 8", "value": 9.0, "passed": True}]
    assert approval_question(ModelSpec(name=built_dpo["a"]), gates)[0] != key


@pytest.fixture
def built_dpo(store):
    from alignment.config import DataSpec, SFTStageConfig
    from alignment.stages import sft

    made = {}
    for name, lr in (("a", 1e-3), ("b", 2e-3)):
        made[name] = sft.run(SFTStageConfig(model=ModelSpec(name="tiny-random"),
                                            data=DataSpec(path="data/sft_train.jsonl", max_rows=4),
                                            options={"train": {"max_steps": 1, "batch_size": 4, "max_length": 64,
                                                               "learning_rate": lr}})).path
    return made


def test_a_release_refuses_an_approval_of_another_artifact(built_dpo):
    from alignment.releases import promote

    with pytest.raises(ValueError, match="an approval releases only the artifact it was asked about"):
        promote("x", built_dpo["a"], run={}, gates=[], approval={"approved": True, "artifact_id": "sft/other"})


def test_a_hub_push_that_cannot_happen_is_recorded_without_the_token(tmp_path, monkeypatch):
    from alignment.releases import push_to_hub

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.delenv("ALIGN_TEST_TOKEN", raising=False)
    assert push_to_hub(tmp_path, "me/policy", "ALIGN_TEST_TOKEN") == {
        "repo": "me/policy", "pushed": False, "reason": "$ALIGN_TEST_TOKEN is not set"}
    monkeypatch.setenv("ALIGN_TEST_TOKEN", "hf_secret_value_123")

    class Refused:  # a hub that refuses and, as real errors may, quotes the request's token
        def __init__(self, token):
            self.token = token

        def create_repo(self, *a, **kw):
            raise RuntimeError(f"401 Unauthorized for token {self.token}")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", Refused)
    out = push_to_hub(tmp_path, "me/policy", "ALIGN_TEST_TOKEN")
    assert out["pushed"] is False and "401 Unauthorized for token ***" in out["reason"]
    assert "hf_secret_value_123" not in json.dumps(out)


def test_only_a_store_artifact_can_be_promoted(tmp_path):
    from alignment.releases import promote

    with pytest.raises(ValueError, match="not an artifact of the store"):
        promote("x", str(tmp_path), run={}, gates=[], approval=None)


def test_promotions_at_once_get_their_own_versions(tmp_path, monkeypatch):
    """Eight promotions of one release name at once (threads; the lock is a per-process flock, so
    processes are serialised the same way): versions 1..8, each record whole, none overwritten,
    `current.json` the last one."""
    from concurrent.futures import ThreadPoolExecutor

    from alignment.releases import promote

    monkeypatch.setenv("ALIGNMENT_HOME", str(tmp_path / "home"))
    artifact = tmp_path / "store" / "dpo" / "k1"
    (artifact / "model").mkdir(parents=True)
    (artifact / "manifest.json").write_text(json.dumps({"artifact_id": "dpo/k1", "files": {
        "model/model.safetensors": {"size": 1, "sha256": "ab"}}}))
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda i: promote("many", str(artifact / "model"), run={"i": i}, gates=[],
                                                  approval=None), range(8)))
    assert sorted(r["version"] for r in records) == list(range(1, 9))
    folder = tmp_path / "home" / "releases" / "many"
    runs = {json.loads((folder / f"v{v}.json").read_text())["run"]["i"] for v in range(1, 9)}
    assert runs == set(range(8)), "every promotion has its own whole record"
    assert json.loads((folder / "current.json").read_text())["version"] == 8
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
