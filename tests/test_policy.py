"""The allowlist of deployment parameters (``flows.service.policy``), exhaustively: every key of every shipped
recipe changed alone is refused unless the allowlist names it; an allowed key is accepted inside its
bounds and refused outside; allowlists that would open what the gates guard are refused at serve time.
The same `violations` function judges every deployment run (tests/test_e2e.py drives real ones)."""

import json
from pathlib import Path

import pytest

from alignment.config import AllowRule
from alignment.config.loader import validate_model
from flows.registry import load_recipe
from flows.service.policy import PolicyError, _out_of_bounds, flatten, matches, never, rules_for, violations

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (ROOT / "flows" / "recipes").glob("*.yaml"))
OUT = ROOT / "test-output"


def changed(value):
    """A different value of the same kind (what a caller would send)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, list):
        return [*value, "x"]
    return "x" if value is None else None


def set_key(tree: dict, key: str, value) -> dict:
    out = json.loads(json.dumps(tree))
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def rule_for(rules: list[AllowRule], key: str) -> AllowRule | None:
    return next((r for r in reversed(rules) if matches(r.key, key)), None)


def inside(rule: AllowRule, served):
    """A value the rule allows that differs from the served one."""
    if rule.file:
        return "data/benign_prompts.jsonl" if served != "data/benign_prompts.jsonl" else "data/eval_prompts.jsonl"
    if rule.choices:
        return next(c for c in rule.choices if c != served)
    low = rule.min if rule.min is not None else 0
    high = min(v for v in (rule.max, rule.max_factor * served if rule.max_factor and served and served > 0 else None)
               if v is not None)
    value = served * 1.25 if isinstance(served, float) and served else (served + 1 if isinstance(served, int) else low)
    value = min(max(value, low), high)
    return value if value != served else (low + high) / 2


def outside(rule: AllowRule):
    if rule.file:
        return "/etc/passwd"
    return "not-a-choice" if rule.choices else 10**12


@pytest.mark.parametrize("name", RECIPES)
def test_every_key_not_on_the_allowlist_is_refused_and_allowed_keys_hold_their_bounds(name):
    _, recipe = load_recipe(name)
    served = recipe.model_dump(mode="json")
    rules = rules_for(recipe)
    refused, allowed = [], []
    for key, value in flatten(served).items():
        found = violations(served, set_key(served, key, changed(value)), rules)
        rule = None if never(key) else rule_for(rules, key)
        if rule is None:
            assert found and found[0].startswith(key), f"{name}: {key} changed and nothing refused it"
            refused.append(key)
            continue
        assert violations(served, set_key(served, key, inside(rule, value)), rules) == [], f"{name}: {key} in bounds"
        bad = violations(served, set_key(served, key, outside(rule)), rules)
        assert bad and bad[0].startswith(key), f"{name}: {key} out of bounds was accepted"
        allowed.append(key)
    assert allowed and refused  # each recipe has tuning keys and far more that are fixed
    OUT.mkdir(exist_ok=True)
    (OUT / f"allowlist-{name}.txt").write_text(
        f"{name}: {len(refused)} keys refused when changed, {len(allowed)} allowed within bounds\n"
        + "".join(f"  allowed  {k}\n" for k in allowed))


def overridden(name: str, overrides: dict) -> tuple[dict, dict, list[AllowRule]]:
    """(served, what a deployment run's recipe becomes, rules), as the flow computes them."""
    _, recipe = load_recipe(name)
    served = recipe.model_dump(mode="json")
    new = validate_model(served, type(recipe), "overrides", overrides=overrides).model_dump(mode="json")
    return served, new, rules_for(recipe)


@pytest.mark.parametrize("overrides,named", [
    ({"sft.data.path": "someone/elses-data"}, "sft.data.path = 'someone/elses-data'"),
    ({"evaluate.redteam_prompts.path": "data/benign_prompts.jsonl"}, "evaluate.redteam_prompts.path"),
    ({"evaluate.judge": None}, "evaluate.judge = None"),
    ({"launch": {"num_processes": 4096}}, "launch = '<section>'"),
    ({"sft.train.max_steps": 10**12}, "sft.train.max_steps = 1000000000000"),
    ({"dpo.train.max_steps": 17}, "above 4 × the served 4"),
    ({"model.trust_remote_code": True}, "model.trust_remote_code = True"),
    ({"engine.kind": "openai", "engine.base_url": "http://evil.example/v1"}, "engine.base_url"),
    ({"promote.approval": False}, "promote.approval = False"),
    ({"promote.hub_repo": "someone/else"}, "promote.hub_repo"),
    ({"gates": []}, "gates = []"),
    ({"sft.train.report_to": ["wandb"]}, "trackers send data off the machine"),
    ({"parameters.allow": [{"key": "**"}]}, "parameters.allow"),
])
def test_what_the_security_review_reached_through_parameters_is_refused(overrides, named):
    served, new, rules = overridden("tiny-release", overrides)
    found = violations(served, new, rules)
    assert any(named in f for f in found), found


def test_tuning_keys_pass_on_a_gated_recipe():
    served, new, rules = overridden("tiny-release", {"dpo.beta": 0.2, "sft.train.learning_rate": 5e-4,
                                                      "dpo.loss_type": "ipo", "sft.train.max_steps": 16,
                                                      "dpo.train.seed": 7})
    assert violations(served, new, rules) == []


def test_a_project_file_may_replace_the_held_out_prompts_where_the_recipe_allows_it():
    """The README's example (`eval_prompts` from the project) on the shipped main job, and what it refuses."""
    ok = violations(*overridden("sft-to-dpo", {"eval_prompts": {"path": "data/benign_prompts.jsonl"}}))
    assert ok == []
    for path, why in [("/etc/passwd", "outside the project"), ("../shared/x.jsonl", "outside the project"),
                      (".alignment/run/api-auth", "hidden or private"), ("data/missing.jsonl", "no such file"),
                      ("README.md", "not a data file")]:
        found = violations(*overridden("sft-to-dpo", {"eval_prompts": {"path": path}}))
        assert len(found) == 1 and why in found[0], (path, found)
    found = violations(*overridden("tiny", {"eval_prompts": {"path": "data/benign_prompts.jsonl"}}))
    assert "not on the allowlist" in found[0], "tiny does not allow it"


@pytest.mark.parametrize("name,rule,error", [
    ("tiny-release", {"key": "eval_prompts.path", "file": True}, "measured by the gates"),
    ("tiny-release", {"key": "sft.data.path", "file": True}, "measured by the gates"),
    ("tiny-release", {"key": "evaluate.bootstrap"}, "measured by the gates"),
    ("tiny", {"key": "gates"}, "is a list"),
    ("tiny", {"key": "model.trust_remote_code"}, "can never be changed"),
    ("tiny", {"key": "**.judge.criterion"}, "can never be changed"),
    ("tiny", {"key": "**.launch.num_processes"}, "names no key"),  # launch is null in the served recipe
    ("tiny", {"key": "dpo.bta"}, "names no key"),
    ("tiny", {"key": "sft.data.path"}, "add `file: true`"),
    ("tiny", {"key": "dpo.beta", "file": True}, "remove `file: true`"),
])
def test_an_allowlist_that_would_open_what_the_gates_guard_is_refused_when_serving(name, rule, error):
    _, recipe = load_recipe(name)
    with pytest.raises(PolicyError, match=error):
        rules_for(recipe.model_copy(update={"parameters": recipe.parameters.model_copy(
            update={"allow": [AllowRule(**rule)]})}))


def test_bounds():
    lr = AllowRule(key="x", min=1e-7, max=1e-3)
    assert _out_of_bounds(lr, 2e-4, 5e-4) is None
    assert "above" in _out_of_bounds(lr, 2e-4, 1.0) and "below" in _out_of_bounds(lr, 2e-4, 0.0)
    assert _out_of_bounds(lr, 2e-4, "0.001") == "not a number" and _out_of_bounds(lr, 2e-4, True) == "not a number"
    assert _out_of_bounds(lr, 2e-4, float("nan")) == "not a number"
    steps = AllowRule(key="x", min=1, max_factor=4)
    assert _out_of_bounds(steps, 10, 40) is None and "4 × the served 10" in _out_of_bounds(steps, 10, 41)
    assert "no ceiling" in _out_of_bounds(steps, -1, 5), "served by epochs, no absolute max: refused"


def test_patterns():
    assert matches("**.train.learning_rate", "dpo.train.learning_rate")
    assert matches("**.train.learning_rate", "rl_cai.ppo.train.learning_rate")
    assert not matches("**.train.learning_rate", "dpo.train.learning_rate_x")
    assert matches("*.beta", "dpo.beta") and not matches("*.beta", "a.b.beta") and matches("**.beta", "beta")
    assert never("reward_mix.judge_weight") and never("evaluate.judge.model.name") and never("ppo.engine.base_url")
    assert never("sft.launch") and never("launch.num_processes") and never("dpo.train.report_to")
    assert not never("dpo.beta")


def test_a_run_is_judged_by_the_records_its_serving_process_loaded(monkeypatch):
    """``flows.service.served``: records are 0600 files whose digest the serving process puts in its runs'
    environment; a run without that environment, a deployment nobody served, or records changed after
    the process started are refused, each saying what to do."""
    import stat

    from flows.service import served

    digest = served.write("test-serve", [{"flow": "sft-to-dpo", "deployment": "sft-to-dpo", "rules": [],
                                          "parameters": {"recipe": {"x": 1}}, "unsafe": False}])
    path = served.folder("test-serve") / "sft-to-dpo" / "sft-to-dpo.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.delenv(served.BY_ENV, raising=False)
    with pytest.raises(served.NotServed, match="not started by `alignment serve` or `alignment worker`"):
        served.load("sft-to-dpo", "sft-to-dpo")
    monkeypatch.setenv(served.BY_ENV, "test-serve")
    monkeypatch.setenv(served.DIGEST_ENV, digest)
    assert served.load("sft-to-dpo", "sft-to-dpo")["parameters"] == {"recipe": {"x": 1}}
    with pytest.raises(served.NotServed, match="a deployment created through the API is not one of ours"):
        served.load("sft-to-dpo", "made-through-the-api")
    with pytest.raises(served.NotServed, match="cannot name"):
        served.load("sft-to-dpo", "../../api-auth")
    path.chmod(0o600)
    path.write_text(json.dumps({"flow": "sft-to-dpo", "deployment": "sft-to-dpo", "unsafe": True}))
    with pytest.raises(served.NotServed, match="changed after the process running this deployment started"):
        served.load("sft-to-dpo", "sft-to-dpo")


def test_a_section_or_list_cannot_be_opened_and_is_never_replaced_whole():
    """An allow rule on a section that is null in the served recipe (or on a list) would let a run fill in
    fields no rule names (a reward model with `trust_remote_code`, a data path anywhere): refused when
    serving, and a section or list that appears, disappears or is replaced in a run is refused."""
    _, recipe = load_recipe("sft-to-dpo")
    for key in ("evaluate.reward_model", "sft.mix_data", "evaluate.kl"):
        with pytest.raises(PolicyError, match="is a section"):
            rules_for(recipe.model_copy(update={"parameters": recipe.parameters.model_copy(
                update={"allow": [AllowRule(key=key)]})}))
    served = recipe.model_dump(mode="json")
    rules = rules_for(recipe) + [AllowRule(key="evaluate.reward_model"), AllowRule(key="sft.adapter.target_modules")]
    sneaked = set_key(served, "evaluate.reward_model", {"name": "someone/rm", "trust_remote_code": True})
    assert "a section or list is set, removed or replaced" in violations(served, sneaked, rules)[0]
    listed = set_key(served, "sft.adapter.target_modules", ["q_proj"])
    assert "a section or list" in violations(served, listed, rules)[0]
