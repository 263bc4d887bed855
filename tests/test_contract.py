"""The stage contract (``alignment.stages.contract``): every stage declares what it reads, and its key hashes
exactly that. Checked by watching each stage run on the tiny model: every config field it hashes must be
read by the stage (a hashed field it never reads would rerun it for nothing), every result carries the
headline metrics it declares, and `auto` settings are resolved (and the device hashed) before the key."""

import json
from contextlib import contextmanager

import pytest

from alignment import stages
from alignment.config import (
    ArtifactRef,
    BenchmarkStageConfig,
    DataSpec,
    FeedbackStageConfig,
    GenerateStageConfig,
    GenerationSpec,
    GRPOStageConfig,
    ModelSpec,
    PairsStageConfig,
    PPOStageConfig,
    RewardSources,
    RewardStageConfig,
    RLOOStageConfig,
    SFTStageConfig,
    TaxStageConfig,
)
from alignment.stages import contract as spec_module

TINY = ModelSpec(name="tiny-random")
FAST = {"max_steps": 1, "batch_size": 4, "max_length": 96, "logging_steps": 1, "learning_rate": 1e-3}


def fields(spec) -> set[str]:
    """A stage config's fields, and its options' as `options.<name>`."""
    top = spec.config.model_fields
    inner = top["options"].annotation.model_fields if "options" in top else {}
    return (set(top) - {"refresh_token"}) | {f"options.{name}" for name in inner}


def hashed_fields(spec) -> set[str]:
    return fields(spec) - set(spec.unhashed)


@contextmanager
def recording(monkeypatch):
    """Record which config fields (and `options.<field>`) each stage reads between its key and its commit."""
    reads: dict[str, set[str]] = {}
    active: list[str] = []
    start, commit = spec_module.StageSpec.start, spec_module.Job.commit

    def recording_start(self, config, context=None):
        job = start(self, config, context)
        job.config = recorded(job.config, "")
        if hasattr(job.config, "options"):
            object.__setattr__(job.config, "options", recorded(job.config.options, "options."))
        active.append(self.name)
        return job

    def quiet_commit(self, out, metrics):
        active.clear()
        return commit(self, out, metrics)

    def recorded(value, prefix):
        names = set(type(value).model_fields)

        class Recorded(type(value)):
            def __getattribute__(inner, name):
                if active and name in names:
                    reads.setdefault(active[-1], set()).add(prefix + name)
                return super().__getattribute__(name)

        return Recorded.model_construct(**dict(value))

    monkeypatch.setattr(spec_module.StageSpec, "start", recording_start)
    monkeypatch.setattr(spec_module.Job, "commit", quiet_commit)
    yield reads


@pytest.fixture(scope="module")
def runs(tiny_recipe, tmp_path_factory):
    """Every stage once, chained on the tiny model with settings that exercise every field; returns
    {stage: (result, fields read)}."""
    import os

    from flows.evaluation import calibrate_config, evaluate_config, respond_config
    from flows.sft_to_dpo import SftToDpoConfigs

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("contract") / "store")
    mp = pytest.MonkeyPatch()
    out = {}
    try:
        with recording(mp) as reads:
            def run(config, label=None):
                stage = stages.spec_for(config)
                result = stages.runner(stage.name)(config)
                out[label or stage.name] = (result, set(reads.pop(stage.name, set())))
                return result

            def model(result):
                return TINY.model_copy(update={"name": result.path})

            configs = SftToDpoConfigs(tiny_recipe)
            mix = {"mix_data": DataSpec(path="data/sft_train.jsonl", max_rows=4), "mix_ratio": 0.5}
            sft_config = configs.sft()
            s = run(sft_config.model_copy(update={"options": sft_config.options.model_copy(update=mix)}))
            d = run(configs.dpo(model(s)))
            ref_answers = run(respond_config(tiny_recipe, model(s)), "respond")
            pol_answers = run(respond_config(tiny_recipe, model(d)), "respond_dpo")
            cal = run(calibrate_config(tiny_recipe))
            # held-out pairs split off by heldout_fraction (with eval_data given, heldout_fraction is unused
            # but still hashed: a setting that matters only under another setting is hashed regardless)
            rm = run(RewardStageConfig(model=TINY, data=DataSpec(path="data/pref_train.jsonl", max_rows=16),
                                       options={"heldout_fraction": 0.25, "train": FAST}))
            ev = evaluate_config(tiny_recipe, pol_answers.to_dict(), ref_answers.to_dict(), cal.to_dict(), model(rm))
            run(ev.model_copy(update={"kl": GenerationSpec(temperature=1.0, max_new_tokens=4)}))
            gen = run(GenerateStageConfig(model=TINY, prompts=DataSpec(path="data/redteam_train.jsonl", max_rows=3),
                                          engine={"kind": "hf"},
                                          num_samples=2, generation={"temperature": 1.0, "max_new_tokens": 6}))
            completions = DataSpec(path=str(stages.spec("generate").output(gen, "completions")))
            from alignment.config import CritiqueReviseStageConfig

            run(CritiqueReviseStageConfig(model=TINY, initial=completions,
                                          generation={"max_new_tokens": 6, "temperature": 1.0},
                                          options={"rounds": 1, "engine": {"kind": "hf"}}))
            run(FeedbackStageConfig(samples=completions, options={
                "principles_per_pair": 1, "chain_of_thought": True, "judge": {"model": TINY, "engine": {"kind": "hf"}}}))
            run(PairsStageConfig(samples=completions, reward=RewardSources(model=model(rm), rule={"contains": "e"}),
                                 min_margin=0.0))
            rl = {"model": TINY, "prompts": DataSpec(path="data/sft_train.jsonl", max_rows=4),
                  "reward": RewardSources(model=model(rm), rule={"contains": "e"})}
            rollout = {"temperature": 1.0, "max_new_tokens": 4}
            run(PPOStageConfig(**rl, options={"iterations": 1, "rollout_batch": 4, "train": {"batch_size": 4},
                                              "rollout": rollout}))
            group = {"rollout": rollout, "num_generations": 2, "train": {**FAST, "max_steps": 1}}
            run(GRPOStageConfig(**rl, options=group))
            run(RLOOStageConfig(**rl, options=group))
            quick = {"limit": 3, "max_new_tokens": 3, "batch_size": 8, "num_fewshot": 1}
            b0 = run(BenchmarkStageConfig(model=model(s), options=quick), "benchmark")
            b1 = run(BenchmarkStageConfig(model=model(d), options=quick), "benchmark_dpo")
            run(TaxStageConfig(models={"sft": {"path": b0.path}, "dpo": {"path": b1.path}}, bootstrap=200))
    finally:
        mp.undo()
        os.environ.pop("ALIGNMENT_STORE")
    return out


def test_every_stage_is_exercised(runs):
    assert {r.stage for r, _ in runs.values()} == set(stages.names())


def test_every_hashed_field_is_read_by_its_stage(runs):
    """Only what a stage reads is hashed: a hashed field that the stage never read would make a change
    to it rerun the stage for nothing (as `eval_prompts` used to rerun training)."""
    for label, (result, reads) in runs.items():
        spec = stages.spec(result.stage)
        assert hashed_fields(spec) <= reads, f"{label}: hashes {sorted(hashed_fields(spec) - reads)} but never reads them"
        assert reads <= fields(spec)


def test_every_result_carries_its_declared_headline_and_outputs(runs):
    for label, (result, _) in runs.items():
        spec = stages.spec(result.stage)
        missing = [k for k in spec.headline if k not in result.metrics]
        assert not missing, f"{label}: headline metrics {missing} missing"
        for name in set(spec.outputs) - set(spec.optional_outputs):
            assert spec.output(result, name).exists(), f"{label}: output {name} missing"


def test_unhashed_paths_name_real_fields():
    for name in stages.names():
        spec = stages.spec(name)
        for dotted in spec.unhashed:
            cls = spec.config
            for part in dotted.split("."):
                assert part in cls.model_fields, f"{name}: unhashed {dotted!r} is not a config field"
                cls = cls.model_fields[part].annotation


def test_an_unhashed_setting_does_not_change_the_key():
    cfg = PPOStageConfig(model=TINY, prompts=DataSpec(path="data/sft_train.jsonl"), reward=RewardSources(rule={"contains": "e"}))
    ppo = stages.spec("ppo")
    o = cfg.options
    assert ppo.key(cfg) == ppo.key(cfg.model_copy(update={"options": o.model_copy(update={
        "train": o.train.model_copy(update={"checkpoint_every": 1, "keep_checkpoints": 5})})}))
    assert ppo.key(cfg) != ppo.key(cfg.model_copy(update={"options": o.model_copy(update={"sample_every": 1})})), \
        "rollouts.jsonl depends on it"


def test_training_configs_hold_no_evaluation_settings():
    for name in ("sft", "dpo", "reward", "ppo", "grpo", "rloo", "generate", "critique_revise", "feedback"):
        assert not {"eval_prompts", "evaluate"} & fields(stages.spec(name)), name
    assert "generation" not in fields(stages.spec("feedback")) and "model" not in fields(stages.spec("feedback"))


def test_auto_is_resolved_before_hashing(monkeypatch):
    """`auto` means LoRA and float32 on this CPU: the same key as saying so. On a GPU it means full
    fine-tuning in bfloat16, and the device is hashed: a different key."""
    import torch

    cfg = SFTStageConfig(model=TINY, data=DataSpec(path="data/sft_train.jsonl"))
    lora = cfg.options.model_copy(update={"adapter": cfg.options.adapter.model_copy(update={"mode": "lora"})})
    explicit = cfg.model_copy(update={"options": lora, "model": TINY.model_copy(update={"dtype": "float32"})})
    sft = stages.spec("sft")
    if torch.cuda.is_available():
        pytest.skip("the CPU half of this check")
    cpu = sft.key(cfg)
    assert cpu == sft.key(explicit)
    job = sft.start(cfg)
    assert job.resolved == {"options.adapter.mode": "lora", "model.dtype": "float32"}
    assert job.config.options.adapter.mode == "lora"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    spec_module.device_kind.cache_clear()
    try:
        gpu = sft.key(cfg)
        assert sft.start(cfg).resolved == {"options.adapter.mode": "full", "model.dtype": "bfloat16"}
        assert gpu != cpu and sft.identity(sft.start(explicit).config)["device"] == "cuda"
        assert sft.key(explicit) not in (cpu, gpu), "explicit LoRA on a GPU: same settings, other device"
    finally:
        spec_module.device_kind.cache_clear()


def test_artifact_refs_hash_the_artifact_id_not_the_path(runs, tmp_path):
    import shutil

    result, _ = runs["respond"]
    moved = tmp_path / "moved"
    shutil.copytree(result.path, moved)
    from pathlib import Path

    from alignment.config import EvaluateStageConfig

    ev = stages.spec("evaluate")
    evaluate_result, _ = runs["evaluate"]
    original = EvaluateStageConfig.model_validate(json.loads((Path(evaluate_result.path) / "config.json").read_text()))
    assert ev.key(original) == evaluate_result.key
    relocated = original.model_copy(update={"reference": ArtifactRef(path=str(moved))})
    assert ev.key(relocated) == ev.key(original)


def test_a_wrong_artifact_kind_is_a_clear_error(runs):
    from alignment.artifacts import ArtifactError
    from alignment.config import EvaluateStageConfig

    sft_result, _ = runs["sft"]
    answers, _ = runs["respond"]
    cfg = EvaluateStageConfig(policy=ArtifactRef(path=sft_result.path), reference=ArtifactRef(path=answers.path))
    with pytest.raises(ArtifactError, match="a sft artifact, expected a respond artifact"):
        stages.runner("evaluate")(cfg)
