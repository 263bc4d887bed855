"""Each training stage on the tiny locally built model: it trains, writes a complete artifact, reuses
it, and refuses bad input before writing anything; `respond` writes held-out answers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.config import DataSpec, ModelSpec, RespondStageConfig
from alignment.data import DataError
from alignment.models import resolve_model_path
from alignment.stages import dpo, respond, sft
from flows.sft_to_dpo import SftToDpoConfigs


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_recipe, tmp_path_factory):
    """SFT then DPO on the tiny model in one store, shared by the tests of this module."""
    import os

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("stages") / "store")
    try:
        s = sft.run(SftToDpoConfigs(tiny_recipe).sft())
        d = dpo.run(SftToDpoConfigs(tiny_recipe).dpo(tiny_recipe.model.model_copy(update={"name": s.path})))
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
    assert manifest["resolved"] == {"options.adapter.mode": "lora", "model.dtype": "float32"}, "what `auto` became here"
    assert manifest["identity"]["device"] == "cpu" or torch.cuda.is_available()
    assert {"model/model.safetensors", "adapter/adapter_config.json", "curves.jsonl", "config.json"} <= set(manifest["files"])
    assert not any(f.startswith(("samples", "checkpoints")) for f in manifest["files"]), "no held-out answers, no scratch"
    before, after = weights(resolve_model_path(tiny_recipe.model)), weights(Path(s.path) / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed), "LoRA merged into the attention/MLP projections"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(Path(s.path) / "model").num_parameters() > 0


def test_dpo_moves_the_policy_and_reports_heldout_accuracy(trained):
    s, d = trained
    m = d.metrics
    assert m["train_pairs"] == 16 and m["heldout_pairs"] == 8
    assert m["heldout_rewards_accuracies"] in {i / 8 for i in range(9)}, "a share of the 8 held-out pairs"
    curves = [json.loads(x) for x in Path(Path(d.path) / "curves.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curves if "loss" in c] == [1, 2, 3, 4]
    assert all("rewards/margins" in c for c in curves if "loss" in c)
    assert d.manifest()["inputs"]["model"]["artifact"] == f"sft/{s.key}", "lineage names the SFT artifact"
    a, b = weights(Path(s.path) / "model"), weights(Path(d.path) / "model")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_dpo_without_heldout_pairs_reports_its_headline_as_not_computed(trained, tiny_recipe, store):
    s, _ = trained
    cfg = SftToDpoConfigs(tiny_recipe).dpo(tiny_recipe.model.model_copy(update={"name": s.path}))
    one_step = cfg.options.model_copy(update={"train": cfg.options.train.model_copy(update={"max_steps": 1})})
    cfg = cfg.model_copy(update={"eval_data": None, "options": one_step})
    m = dpo.run(cfg).metrics
    assert all(m[k] is None for k in dpo.SPEC.headline if k != "train_seconds") and m["train_seconds"] > 0


def test_second_run_reuses_the_artifact(trained, tiny_recipe, monkeypatch):
    s, _ = trained
    monkeypatch.setenv("ALIGNMENT_STORE", str(Path(s.path).parent.parent))
    import alignment.stages.sft as mod

    monkeypatch.setattr(mod, "train", lambda *a, **k: pytest.fail("must not train again"))
    again = sft.run(SftToDpoConfigs(tiny_recipe).sft())
    assert again.reused and again.key == s.key and again.metrics == s.metrics


def test_training_is_deterministic_for_a_seed(tiny_recipe, store):
    cfg = SftToDpoConfigs(tiny_recipe).sft()
    one = sft.run(cfg)
    two = sft.run(cfg.model_copy(update={"refresh_token": "again"}))
    assert one.key != two.key
    assert one.metrics["train_loss"] == pytest.approx(two.metrics["train_loss"], rel=1e-6)


def test_bad_preference_data_fails_before_anything_is_written(tiny_recipe, store, tmp_path, monkeypatch):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    import alignment.stages.dpo as mod

    monkeypatch.setattr(mod, "train", lambda *a, **k: pytest.fail("must not load or train"))
    cfg = SftToDpoConfigs(tiny_recipe).dpo().model_copy(update={"data": DataSpec(path=str(bad))})
    with pytest.raises(DataError, match=r"prefs\.jsonl line 2: preference row is missing 'rejected'"):
        dpo.run(cfg)
    assert not store.root.exists() or not any(p for p in store.root.rglob("*") if p.is_file())


def test_respond_writes_answers_per_set(store):
    sets = {"heldout": DataSpec(path="data/eval_prompts.jsonl", max_rows=4),
            "benign": DataSpec(path="data/benign_prompts.jsonl", max_rows=3)}
    r = respond.run(RespondStageConfig(model=ModelSpec(name="tiny-random"), sets=sets,
                                       generation={"max_new_tokens": 6}))
    answers = respond.read_responses(r)
    assert {k: len(v) for k, v in answers.items()} == {"heldout": 4, "benign": 3}
    assert answers["heldout"][0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert all(0 <= row["tokens"] <= 6 for rows in answers.values() for row in rows)
    assert r.metrics["heldout_prompts"] == 4 and r.metrics["engine"] == "hf"
    assert respond.model_of(r.path).name == "tiny-random"


def test_qlora_on_cpu_is_a_clear_error(tiny_recipe, store):
    from alignment.config import AdapterMode
    from alignment.models import ModelError, load_model

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    adapter = tiny_recipe.sft.adapter.model_copy(update={"mode": AdapterMode.qlora})
    with pytest.raises(ModelError, match="'qlora' needs a CUDA GPU"):
        load_model(ModelSpec(name="tiny-random"), adapter)


def test_a_stage_runs_alone_from_the_command_line(tmp_path, home):
    import subprocess
    import sys

    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model: {name: tiny-random}\ndata: {path: data/sft_train.jsonl, max_rows: 8}\n"
                   "options: {train: {max_steps: 2, batch_size: 4, max_length: 96}}\n")
    env = {**__import__("os").environ, "ALIGNMENT_STORE": str(tmp_path / "store")}
    p = subprocess.run([sys.executable, "-m", "alignment.stages.sft", "--config", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert result["stage"] == "sft" and result["metrics"]["steps"] == 2
    assert (Path(result["path"]) / "manifest.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "flows.service.cli", "stage", "sft", "--config", str(cfg),
                          "-p", "options.train.learning_rate=-1"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "options.train.learning_rate = -1: Input should be greater than 0" in bad.stderr
