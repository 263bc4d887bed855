"""The reward stage on the tiny model: it learns a separable preference, reports held-out accuracy and
margins, trains on soft labels, and rejects bad targets before training."""

import json
from pathlib import Path

import pytest

from alignment.config import RewardStageConfig
from alignment.data import DataError


def pairs(path: Path, n: int, soft: list[float] | None = None) -> Path:
    rows = []
    for i in range(n):  # same length, different words: length cannot explain the preference
        row = {"prompt": [{"role": "user", "content": f"Question {i}?"}],
               "chosen": [{"role": "assistant", "content": "good good good"}],
               "rejected": [{"role": "assistant", "content": "bad! bad! bad!"}]}
        if soft is not None:
            row["soft_label"] = soft[i % len(soft)]
        rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def config(data: Path, **options) -> RewardStageConfig:
    """A reward config on `data`; keyword arguments are RewardOptions."""
    options.setdefault("train", {"learning_rate": 1e-3, "batch_size": 8, "epochs": 2, "max_length": 128,
                                 "logging_steps": 1})
    return RewardStageConfig(model={"name": "tiny-random"}, data={"path": str(data)},
                             options={"adapter": {"mode": "full"}, **options})


def test_reward_model_learns_and_reports(store, tmp_path):
    from alignment.rewards import RewardModel
    from alignment.stages import reward

    res = reward.run(config(pairs(tmp_path / "p.jsonl", 80)))
    m, path = res.metrics, Path(res.path)
    assert m["targets"] == "hard" and m["heldout_pairs"] == 8 and m["train_pairs"] == 72
    assert m["loss_last"] < m["loss_first"]
    assert m["heldout_accuracy"] == 1.0 and m["heldout_margin_p10"] > 0
    assert m["heldout_length_baseline_accuracy"] == 0.0  # equal lengths: "longer wins" never does
    assert m["heldout_pairs_chosen_longer"] == 0 and m["heldout_accuracy_chosen_longer"] is None
    assert sum(m["heldout_margin_histogram"]["counts"]) == 8
    assert "Held-out accuracy" in (path / "report.md").read_text()
    assert len((path / "heldout.jsonl").read_text().splitlines()) == 8
    from alignment.config import ModelSpec

    rm = RewardModel.load(ModelSpec(name=str(path)))  # the artifact loads as a one-output classifier
    good, bad = rm.score([[{"role": "user", "content": "Question 999?"}]] * 2, ["good good good", "bad! bad! bad!"])
    assert good > bad


def test_soft_labels_are_targets(store, tmp_path):
    """Every pair labelled 0.6: the cross-entropy optimum is sigmoid(margin) = 0.6, i.e. margin = 0.405,
    where hard labels push the margin up without bound."""
    import math

    from alignment.stages import reward

    soft = reward.run(config(pairs(tmp_path / "s.jsonl", 80, soft=[0.6]), train={
        "learning_rate": 1e-3, "batch_size": 8, "epochs": 4, "max_length": 128})).metrics
    hard = reward.run(config(pairs(tmp_path / "h.jsonl", 80), train={
        "learning_rate": 1e-3, "batch_size": 8, "epochs": 4, "max_length": 128})).metrics
    assert soft["targets"] == "soft" and hard["targets"] == "hard"
    assert soft["heldout_margin_p50"] == pytest.approx(math.log(0.6 / 0.4), abs=0.2)
    assert hard["heldout_margin_p50"] > 3 * soft["heldout_margin_p50"]


def test_soft_targets_without_labels_is_a_clear_error(store, tmp_path):
    from alignment.stages import reward

    with pytest.raises(DataError, match=r"row 1: targets is 'soft' but the row has no 'soft_label'"):
        reward.run(config(pairs(tmp_path / "p.jsonl", 10), targets="soft"))
    assert not any(Path(store.root).rglob("manifest.json"))


def test_bad_soft_label_names_the_line(tmp_path):
    from alignment.config import DataSpec
    from alignment.data import load_data

    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "soft_label": 0.7}\n'
                 '{"prompt": "q", "chosen": "a", "rejected": "b", "soft_label": "high"}\n')
    with pytest.raises(DataError, match=r"line 2: field 'soft_label' is 'high'; expected a number in \[0, 1\]"):
        load_data(DataSpec(path=str(p)), "preference")
