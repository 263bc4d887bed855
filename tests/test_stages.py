"""Each stage on the tiny locally built model: it trains, writes a complete artifact, reuses it, and
refuses bad input before writing anything."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.config import DataSpec, ModelSpec
from alignment.data import DataError
from alignment.models import resolve_model_path
from alignment.stages import baseline, dpo, sft


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_recipe, tmp_path_factory):
    """SFT then DPO on the tiny model in one store, shared by the tests of this module."""
    import os

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("stages") / "store")
    try:
        s = sft.run(tiny_recipe.stage_config("sft"))
        d = dpo.run(tiny_recipe.stage_config("dpo", model=tiny_recipe.model.model_copy(update={"name": s.path})))
        yield s, d
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def test_sft_trains_and_writes_a_loadable_artifact(trained, tiny_recipe):
    s, _ = trained
    m = s.metrics
    assert m["steps"] == 4 and m["adapter_mode"] == "lora" and m["adapter"] is True
    assert m["loss_last"] < m["loss_first"], "SFT loss falls"
    manifest = s.manifest()
    assert manifest["artifact_id"] == f"sft/{s.key}" and manifest["inputs"]["data"]["sha256"]
    assert manifest["libraries"]["trl"] == "1.16.0" and manifest["metrics"] == m
    assert {"model/model.safetensors", "adapter/adapter_config.json", "samples.jsonl", "curves.jsonl",
            "config.json"} <= set(manifest["files"])
    before, after = weights(resolve_model_path(tiny_recipe.model)), weights(Path(s.path) / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed), "LoRA merged into the attention/MLP projections"
    samples = [json.loads(x) for x in open(Path(s.path) / "samples.jsonl")]
    assert len(samples) == 4 and samples[0]["prompt"][0]["role"] == "user"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(Path(s.path) / "model").num_parameters() > 0


def test_dpo_moves_the_policy_and_reports_heldout_accuracy(trained):
    s, d = trained
    m = d.metrics
    assert m["train_pairs"] == 16 and m["heldout_pairs"] == 8
    assert 0.0 <= m["heldout_rewards_accuracies"] <= 1.0 and "heldout_rewards_margins" in m
    curves = [json.loads(x) for x in open(Path(d.path) / "curves.jsonl")]
    assert [c["step"] for c in curves if "loss" in c] == [1, 2, 3, 4]
    assert all("rewards/margins" in c for c in curves if "loss" in c)
    assert d.manifest()["inputs"]["model"]["artifact"] == f"sft/{s.key}", "lineage names the SFT artifact"
    a, b = weights(Path(s.path) / "model"), weights(Path(d.path) / "model")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_second_run_reuses_the_artifact(trained, tiny_recipe, monkeypatch):
    s, _ = trained
    monkeypatch.setenv("ALIGNMENT_STORE", str(Path(s.path).parent.parent))
    import alignment.stages.sft as mod

    monkeypatch.setattr(mod, "train", lambda *a, **k: pytest.fail("must not train again"))
    again = sft.run(tiny_recipe.stage_config("sft"))
    assert again.reused and again.key == s.key and again.metrics == s.metrics


def test_training_is_deterministic_for_a_seed(tiny_recipe, store):
    cfg = tiny_recipe.stage_config("sft").model_copy(update={"eval_prompts": None})
    one = sft.run(cfg)
    two = sft.run(cfg.model_copy(update={"refresh_token": "again"}))
    assert one.key != two.key
    assert one.metrics["train_loss"] == pytest.approx(two.metrics["train_loss"], rel=1e-6)


def test_bad_preference_data_fails_before_anything_is_written(tiny_recipe, store, tmp_path, monkeypatch):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    import alignment.stages.dpo as mod

    monkeypatch.setattr(mod, "train", lambda *a, **k: pytest.fail("must not load or train"))
    cfg = tiny_recipe.stage_config("dpo").model_copy(update={"data": DataSpec(path=str(bad))})
    with pytest.raises(DataError, match=r"prefs\.jsonl line 2: preference row is missing 'rejected'"):
        dpo.run(cfg)
    assert not store.root.exists() or not any(p for p in store.root.rglob("*") if p.is_file())


def test_baseline_writes_responses(tiny_recipe, store):
    b = baseline.run(tiny_recipe.stage_config("baseline"))
    assert b.metrics == {"prompts": 4, "engine": "hf"} and len(open(Path(b.path) / "samples.jsonl").readlines()) == 4


def test_qlora_on_cpu_is_a_clear_error(tiny_recipe, store):
    from alignment.config import AdapterMode
    from alignment.models import ModelError, load_model

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    adapter = tiny_recipe.sft.adapter.model_copy(update={"mode": AdapterMode.qlora})
    with pytest.raises(ModelError, match="'qlora' needs a CUDA GPU"):
        load_model(ModelSpec(name="tiny-random"), adapter)


def test_evaluate_writes_report_and_flags_a_chance_judge(tiny_recipe, store):
    from alignment.stages import evaluate

    cfg = tiny_recipe.stage_config("evaluate", model=ModelSpec(name="tiny-random"),
                                   reference=ModelSpec(name="tiny-random"))
    r = evaluate.run(cfg)
    m = r.metrics
    assert m["n"] == 4 and 0 <= m["win_rate_ci_low"] <= m["win_rate"] <= m["win_rate_ci_high"] <= 1
    assert m["judge_calibration_n"] == 6 and m["judge_calibration_meaningful"] is False
    assert m["length_drift_ratio"] == pytest.approx(1.0), "same model on both sides"
    report = (Path(r.path) / "report.md").read_text()
    assert "not meaningful" in report and "over-refusal on benign prompts (keyword)" in report
    rows = [json.loads(x) for x in open(Path(r.path) / "responses.jsonl")]
    assert {x["set"] for x in rows} == {"heldout", "redteam", "benign"} and len(rows) == 12
    assert "p_policy_better" in rows[0] and "policy_refused" in rows[-1]


def test_template_edit_changes_only_the_stages_that_render_it(tiny_recipe, monkeypatch, tmp_path):
    import shutil

    import alignment.prompts as prompts
    from alignment.stages import artifact_key

    ev = tiny_recipe.stage_config("evaluate", model=ModelSpec(name="tiny-random"), reference=ModelSpec(name="tiny-random"))
    before = artifact_key("evaluate", ev), artifact_key("sft", tiny_recipe.stage_config("sft"))
    edited = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPTS_DIR, edited)
    (edited / "judge_pairwise.jinja").write_text((edited / "judge_pairwise.jinja").read_text() + "\nBe strict.\n")
    monkeypatch.setattr(prompts, "PROMPTS_DIR", edited)
    prompts.environment.cache_clear()
    after = artifact_key("evaluate", ev), artifact_key("sft", tiny_recipe.stage_config("sft"))
    prompts.environment.cache_clear()
    assert after[0] != before[0] and after[1] == before[1]


def test_a_stage_runs_alone_from_the_command_line(tmp_path, home):
    import subprocess
    import sys

    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model: {name: tiny-random}\ndata: {path: data/sft_train.jsonl, max_rows: 8}\n"
                   "train: {max_steps: 2, batch_size: 4, max_length: 96}\n")
    env = {**__import__("os").environ, "ALIGNMENT_STORE": str(tmp_path / "store")}
    p = subprocess.run([sys.executable, "-m", "alignment.stages.sft", "--config", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert result["stage"] == "sft" and result["metrics"]["steps"] == 2
    assert (Path(result["path"]) / "manifest.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "stage", "sft", "--config", str(cfg),
                          "-p", "train.learning_rate=-1"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "train.learning_rate = -1: Input should be greater than 0" in bad.stderr


def test_evaluate_scores_responses_with_a_reward_model(tiny_recipe, store, tmp_path):
    """A locally built one-output sequence classifier stands in for the reward stage's artifact."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from alignment.stages import evaluate

    base = resolve_model_path(ModelSpec(name="tiny-random"))
    cfg = LlamaConfig.from_pretrained(base)
    cfg.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "rm")
    ev = tiny_recipe.stage_config("evaluate", model=ModelSpec(name="tiny-random"), reference=ModelSpec(name="tiny-random"))
    ev = ev.model_copy(update={"reward_model": ModelSpec(name=str(tmp_path / "rm"))})
    m = evaluate.run(ev).metrics
    assert m["reward_policy_mean"] == pytest.approx(m["reward_reference_mean"]), "same model, same responses"
    assert m["reward_diff_mean"] == pytest.approx(0.0, abs=1e-6) and m["reward_model"].endswith("rm")
