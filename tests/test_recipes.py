from pathlib import Path

import pytest
import yaml

from alignment.config import DPOStageConfig, SftToDpoRecipe
from alignment.config.loader import RecipeError, apply_overrides, load_yaml_model
from flows.registry import recipe_path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "flows" / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"sft-to-dpo", "tiny", "constitutional-ai", "constitutional-ai-tiny", "rlhf",
                                         "rlhf-tiny", "iterative-dpo", "iterative-dpo-tiny", "tiny-release"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_with_its_data(path):
    from flows.registry import load_recipe

    text = path.read_text()
    assert text.startswith("#") and ("alignment run" in text or "prefect deployment run" in text), \
        "a recipe starts with the command that runs it"
    spec, recipe = load_recipe(str(path))
    assert spec.name == recipe.flow == yaml.safe_load(text)["flow"], "the recipe's `flow:` key decides its flow"
    spec.check(recipe)


def _broken(tmp_path, old, new):
    text = (ROOT / "flows" / "recipes" / "sft-to-dpo.yaml").read_text()
    assert old in text
    p = tmp_path / "r.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


def test_unknown_key_names_line_and_key(tmp_path):
    p = _broken(tmp_path, "  beta: 0.1", "  betta: 0.1")
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "betta" in t)
    with pytest.raises(RecipeError) as e:
        load_yaml_model(p, SftToDpoRecipe)
    msg = str(e.value)
    assert f"r.yaml line {line}: dpo.betta: unknown key" in msg and "beta" in msg and "typo" in msg


def test_negative_learning_rate(tmp_path):
    p = _broken(tmp_path, "    learning_rate: 2.0e-4\n    epochs: 1\n    batch_size: 8\n    max_length: 192\n"
                "    logging_steps: 2\ndpo:", "    learning_rate: -1.0e-5\n    epochs: 1\n    batch_size: 8\n"
                "    max_length: 192\n    logging_steps: 2\ndpo:")
    line = next(i for i, t in enumerate(p.read_text().splitlines(), 1) if "-1.0e-5" in t)
    with pytest.raises(RecipeError, match=rf"line {line}: sft.train.learning_rate = -1e-05: Input should be "
                                          r"greater than 0\. Fix: Peak learning rate"):
        load_yaml_model(p, SftToDpoRecipe)


def test_bad_enum_and_missing_section(tmp_path):
    with pytest.raises(RecipeError, match="dpo.loss_type = 'sigmoidd'"):
        load_yaml_model(_broken(tmp_path, "loss_type: sigmoid", "loss_type: sigmoidd"), SftToDpoRecipe)
    with pytest.raises(RecipeError, match=r"eval_prompts: Field required"):
        load_yaml_model(_broken(tmp_path, "eval_prompts:\n  path: data/eval_prompts.jsonl\n", ""), SftToDpoRecipe)


def test_overrides_are_dotted_and_validated():
    base = {"a": {"b": 1}}
    assert apply_overrides(base, {"a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3} and base == {"a": {"b": 1}}
    r = load_yaml_model(recipe_path("sft-to-dpo"), SftToDpoRecipe, {"dpo.beta": 0.3})
    assert r.dpo.beta == 0.3 and r.dpo.train.learning_rate == 2e-4  # the rest of dpo is kept
    with pytest.raises(RecipeError, match=r"overrides|dpo.beta = -1"):
        load_yaml_model(recipe_path("sft-to-dpo"), SftToDpoRecipe, {"dpo.beta": -1})


def test_unknown_recipe_name():
    with pytest.raises(RecipeError, match="known recipes: .*sft-to-dpo"):
        recipe_path("sft-to-dop")


def test_stage_config_yaml_for_standalone_stage(tmp_path):
    p = tmp_path / "dpo.yaml"
    p.write_text("model: {name: tiny-random}\ndata: {path: data/pref_train.jsonl}\noptions: {beta: 0.2}\n")
    cfg = load_yaml_model(p, DPOStageConfig)
    assert cfg.options.beta == 0.2 and cfg.options.train.learning_rate == 5e-5


def test_a_stage_config_knob_outside_options_names_where_it_goes(tmp_path):
    p = tmp_path / "dpo.yaml"
    p.write_text("model: {name: tiny-random}\ndata: {path: data/pref_train.jsonl}\nbeta: 0.2\n")
    with pytest.raises(RecipeError, match=r"dpo.yaml line 3: beta: unknown key. Fix: a stage config holds its "
                       r"knobs under `options:`; move it there \(options.beta\)"):
        load_yaml_model(p, DPOStageConfig)


def test_flow_parameter_schema_forbids_unknown_keys():
    from prefect.utilities.callables import parameter_schema

    from flows.sft_to_dpo import sft_to_dpo

    schema = parameter_schema(sft_to_dpo).model_dump()
    defs = schema["definitions"]
    assert defs["SftToDpoRecipe"]["additionalProperties"] is False
    assert defs["TrainSpec"]["properties"]["learning_rate"]["exclusiveMinimum"] == 0
