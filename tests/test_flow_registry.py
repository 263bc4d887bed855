"""Flows declare themselves: a toy two-step flow, one module outside the project plus its recipe, is seen
by the registry, `alignment flows`, `alignment validate`, serve's deployments and deploy's entrypoint, and
runs (then reruns cached) in-process, with no other file changed. Recipes say which flow they drive
(`flow:`), so a file's name decides nothing; a run from a deployment needs run hooks to judge it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prefect_api import task_states

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

TOY = '''
"""A toy flow: the base model's answers, then SFT."""
from typing import Any, Literal

from prefect import flow

from alignment.config import RecipeBase, SFTOptions, SFTSection, SFTStageConfig
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.spec import Configs, FlowSpec

NAME = "toy"


class ToyRecipe(RecipeBase):
    flow: Literal["toy"] = "toy"
    sft: SFTSection


def steps(recipe):
    return ("respond_base", "sft")


class ToyConfigs(Configs):
    def sft(self) -> SFTStageConfig:
        return SFTStageConfig(model=self.recipe.model, data=self.recipe.sft.data,
                              options=SFTOptions.of(self.recipe.sft, self.recipe.launch))

    def training(self):
        return {"sft": self.sft()}


@flow(name=NAME, persist_result=False)
@gated
def toy(recipe: ToyRecipe, refresh: list[str] | None = None, overrides: dict[str, Any] | None = None):
    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)
    chain.run("respond_base", respond_config(recipe, recipe.model, evaluated=False))
    model = model_from(chain.run("sft", chain.configs.sft()), recipe.model)
    return chain.close(recipe, model)


FLOW = FlowSpec(name=NAME, recipe=ToyRecipe, function=toy, steps=steps, configs=ToyConfigs,
                description="base answers → SFT (a test's toy)")
'''


def toy_recipe_text(flow: str = "toy") -> str:
    return textwrap.dedent(f"""\
        flow: {flow}
        model: {{name: tiny-random}}
        eval_prompts: {{path: {DATA / 'eval_prompts.jsonl'}, max_rows: 2}}
        generation: {{max_new_tokens: 4}}
        evaluate: null
        sft:
          data: {{path: {DATA / 'sft_train.jsonl'}, max_rows: 8}}
          train: {{learning_rate: 1.0e-3, max_steps: 2, batch_size: 4, max_length: 64, logging_steps: 1}}
        """)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy flow's module on sys.path and named in $ALIGNMENT_FLOWS; its recipe in tmp_path."""
    (tmp_path / "toy_flow.py").write_text(TOY)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(toy_recipe_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ALIGNMENT_FLOWS", "toy_flow")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return recipe


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.service.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_the_project_flows_are_found_by_their_declarations():
    from flows import registry

    assert registry.names() == ("constitutional-ai", "iterative-dpo", "rlhf", "sft-to-dpo")
    for name, spec in registry.flows().items():
        assert spec.function.name == name and spec.recipe.model_fields["flow"].default == name
        assert spec.entrypoint == f"flows/{name.replace('-', '_')}.py:{name.replace('-', '_')}"
        assert registry.flow_of(registry.recipe_path(spec.default_recipe)) == name


def test_a_toy_flow_is_seen_by_the_cli_validate_serve_and_deploy(toy, tmp_path):
    from flows import registry
    from flows.service.serve import deployments, recipes_to_serve

    spec = registry.get("toy")
    assert spec.module == "toy_flow" and spec.entrypoint == f"{tmp_path / 'toy_flow.py'}:toy"

    listed = cli("flows")
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout and "toy_flow" in listed.stdout and "sft-to-dpo" in listed.stdout

    checked = cli("validate", str(toy))
    assert checked.returncode == 0, checked.stderr
    assert f"ok  {toy}  (toy: 2 steps)" in checked.stdout
    assert "sft_train.jsonl: 8 rows used" in checked.stdout, "the data report reads the toy's training configs"

    served = recipes_to_serve([str(toy)])
    assert served[0] == str(toy) and len(served) == 5, "the toy recipe, then each project flow's default"
    names = {f"{d.flow_name}/{d.name}" for d, _ in deployments(served)}
    assert {n for n in names if n.startswith("toy/")} == {"toy/toy", "toy/rerun-respond_base", "toy/rerun-sft"}
    assert "sft-to-dpo/sft-to-dpo" in names

    # deploy loads the flow from its entrypoint: the module's own file, as a worker would
    from prefect.flows import load_flow_from_entrypoint

    assert load_flow_from_entrypoint(spec.entrypoint).name == "toy"


def test_a_toy_flow_runs_and_reruns_cached(toy, prefect_harness, tmp_path, monkeypatch):
    from alignment.artifacts import ArtifactStore
    from flows import registry

    monkeypatch.setenv("ALIGNMENT_STORE", str(tmp_path / "store"))
    spec, recipe = registry.load_recipe(str(toy))
    first = spec.function(recipe=recipe, return_state=True)
    assert first.is_completed(), first.message
    assert task_states(str(first.state_details.flow_run_id)) == {"respond_base": "Completed", "sft": "Completed"}
    result = first.result()
    assert ArtifactStore().complete("sft", result["stages"]["sft"]["key"])
    again = spec.function(recipe=recipe, return_state=True)
    assert task_states(str(again.state_details.flow_run_id)) == {"respond_base": "Cached", "sft": "Cached"}


def test_a_recipe_names_its_flow_and_the_file_name_decides_nothing(tmp_path):
    from alignment.config import ConstitutionalAIRecipe
    from alignment.config.loader import RecipeError
    from flows import registry

    cai = tmp_path / "cai-test.yaml"  # looks like no flow's name; once checked as sft-to-dpo by its name
    cai.write_text((ROOT / "flows" / "recipes" / "constitutional-ai-tiny.yaml").read_text())
    spec, recipe = registry.load_recipe(str(cai))
    assert spec.name == "constitutional-ai" and isinstance(recipe, ConstitutionalAIRecipe)

    missing = tmp_path / "sft-to-dpo.yaml"  # a flow's name, but no flow: key
    missing.write_text("\n".join(line for line in toy_recipe_text("sft-to-dpo").splitlines() if not line.startswith("flow")))
    with pytest.raises(RecipeError, match=r"sft-to-dpo.yaml: no `flow:` key; .*\(flows: constitutional-ai, "):
        registry.load_recipe(str(missing))

    unknown = tmp_path / "typo.yaml"
    unknown.write_text(toy_recipe_text("sft-to-dop"))
    with pytest.raises(RecipeError, match=r"typo.yaml line 1: flow: 'sft-to-dop' is not a flow; flows: "):
        registry.load_recipe(str(unknown))

    wrong = tmp_path / "wrong.yaml"  # an sft-to-dpo recipe pointed at rlhf: rlhf's model names what is missing
    wrong.write_text((ROOT / "flows" / "recipes" / "tiny.yaml").read_text().replace("flow: sft-to-dpo", "flow: rlhf"))
    with pytest.raises(RecipeError, match=r"wrong.yaml"):
        registry.load_recipe(str(wrong))

    with pytest.raises(RecipeError, match=r"a recipe's flow is its file's `flow:` key"):
        registry.load_recipe("tiny", overrides={"flow": "rlhf"})


def test_two_modules_declaring_one_flow_are_refused(tmp_path, monkeypatch):
    from alignment.config.loader import RecipeError
    from flows import registry

    (tmp_path / "dup_flow.py").write_text(TOY.replace('NAME = "toy"', 'NAME = "sft-to-dpo"').replace(
        'Literal["toy"] = "toy"', 'Literal["sft-to-dpo"] = "sft-to-dpo"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ALIGNMENT_FLOWS", "dup_flow")
    with pytest.raises(RecipeError, match=r"two modules declare the flow 'sft-to-dpo': flows.sft_to_dpo and dup_flow"):
        registry.flows()
    monkeypatch.setenv("ALIGNMENT_FLOWS", "no_such_module")
    with pytest.raises(RecipeError, match=r"names 'no_such_module', which does not import"):
        registry.flows()


def test_a_flow_spec_that_disagrees_with_its_recipe_model_is_refused():
    from alignment.config import RLHFRecipe
    from flows.sft_to_dpo import FLOW
    from flows.spec import FlowSpec

    with pytest.raises(TypeError, match=r"its recipe model RLHFRecipe must declare `flow: Literal\['sft-to-dpo'\]"):
        FlowSpec(name="sft-to-dpo", recipe=RLHFRecipe, function=FLOW.function, steps=FLOW.steps)


def test_without_run_hooks_a_deployment_run_is_refused(monkeypatch):
    """A library user calling a flow needs no server; a run from a deployment does: its parameters came
    through an API, and only the service's hooks judge them against what was served."""

    from flows.chain import RunHooks

    RunHooks().check_parameters(None)  # not from a deployment: nothing to judge
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "d-1")
    with pytest.raises(PermissionError, match="no run hooks are installed"):
        RunHooks().check_parameters(None)


def test_the_service_installs_its_hooks_through_the_entry_point():
    from flows.chain import hooks
    from flows.service.hooks import ServiceHooks

    assert isinstance(hooks(), ServiceHooks)


def test_the_serve_process_restarts_when_library_code_changes(tmp_path, monkeypatch):
    """The served recipe is written out by the recipe schema in `alignment/config`: a serve process that
    outlives a change there checks runs against a stale copy (a new option's default reads as an override
    the allowlist refuses), so the fingerprint that decides a restart covers `alignment/` as well as `flows/`."""
    from flows.service import serve, server

    for folder in ("flows", "alignment/config"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "m.py").write_text("x = 1\n")
    monkeypatch.setattr(server, "ROOT", tmp_path)
    monkeypatch.setattr(server, "credential", lambda: "c")
    before = serve._fingerprint([], [])
    assert serve._fingerprint([], []) == before
    (tmp_path / "alignment/config/m.py").write_text("x = 2\n")
    after = serve._fingerprint([], [])
    assert after != before
    (tmp_path / "flows/m.py").write_text("y = 1\n")
    assert serve._fingerprint([], []) not in (before, after)
