"""The `pairs` stage (the labelling step of iterative DPO): every sampled response scored, best vs worst
per prompt, near-ties and identical responses dropped and counted, and the output is preference data the
DPO stage reads. A rule reward makes the expected pairs exact; the reward-model path runs in
tests/test_contract.py."""

import json
from pathlib import Path

import pytest

from alignment.config import DataSpec, PairsStageConfig
from alignment.data import load_data
from alignment.stages import pairs

SAMPLES = {  # prompt → responses; the rule counts "e" (at most 5)
    "Name a fruit.": ["apple", "kiwi", "green pear, ripe"],  # 1, 0, 4 e's: pear ≻ kiwi, margin 4
    "Name a colour.": ["red", "blue", "teal"],  # 1, 1, 1: margin 0, dropped under min_margin 1
    "Name a pet.": ["cat", "cat", "cat"],  # identical: dropped
    "Name a tree.": ["oak", "elm", "cedar tree"],  # 0, 1, 4: cedar ≻ oak
}


def samples_file(tmp_path: Path, samples: dict = SAMPLES) -> Path:
    path = tmp_path / "completions.jsonl"
    with open(path, "w") as f:
        for prompt, responses in samples.items():
            for k, r in enumerate(responses):
                f.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                    "completion": [{"role": "assistant", "content": r}], "sample": k}) + "\n")
    return path


def config(path: Path, **kw) -> PairsStageConfig:
    return PairsStageConfig(samples=DataSpec(path=str(path)), reward={"rule": {"contains": "e", "mode": "count"}}, **kw)


def test_best_against_worst_with_near_ties_and_identical_responses_dropped(store, tmp_path):
    r = pairs.run(config(samples_file(tmp_path), min_margin=1.0))
    assert {k: r.metrics[k] for k in ("prompts", "responses", "pairs_kept", "pairs_dropped_margin", "pairs_identical")} == {
        "prompts": 4, "responses": 12, "pairs_kept": 2, "pairs_dropped_margin": 1, "pairs_identical": 1}
    rows = [json.loads(line) for line in open(Path(r.path) / "preferences.jsonl")]
    got = {row["prompt"][-1]["content"]: (row["chosen"][-1]["content"], row["rejected"][-1]["content"], row["margin"])
           for row in rows}
    assert got == {"Name a fruit.": ("green pear, ripe", "kiwi", 4.0), "Name a tree.": ("cedar tree", "oak", 3.0)}
    assert r.metrics["mean_margin"] == pytest.approx(3.5)
    scores = [json.loads(line) for line in open(Path(r.path) / "scores.jsonl")]
    assert len(scores) == 12 and scores[2] == {**scores[2], "response": "green pear, ripe", "score": 4.0, "rule": 4.0}
    # exact ties never make a pair, even with min_margin 0 (sample order would pick `chosen`)
    assert pairs.run(config(samples_file(tmp_path), min_margin=0.0)).metrics["pairs_dropped_margin"] == 1
    # what DPO reads: valid preference data, every pair kept
    assert len(load_data(DataSpec(path=str(Path(r.path) / "preferences.jsonl")), "preference").rows) == 2


def test_one_response_per_prompt_is_a_clear_error_before_scoring(store, tmp_path, monkeypatch):
    monkeypatch.setattr(pairs.RewardFunction, "load", lambda *a: pytest.fail("must not load a reward model"))
    with pytest.raises(ValueError, match=r"prompt 1 \(and 0 more\) has one response.*num_samples >= 2"):
        pairs.run(config(samples_file(tmp_path, {"Name a fruit.": ["apple"], "Name a tree.": ["oak", "elm"]})))
    assert not store.root.exists() or not any(p for p in store.root.rglob("*") if p.is_file())


def test_no_pair_left_is_a_clear_error_and_nothing_is_stored(store, tmp_path):
    with pytest.raises(ValueError, match="none of 4 prompts gave a pair.*lower min_margin"):
        pairs.run(config(samples_file(tmp_path), min_margin=10.0))
    assert not list(store.root.glob("pairs/*/manifest.json"))
