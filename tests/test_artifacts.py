import json
from pathlib import Path

import pytest

from alignment.artifacts import MANIFEST, code_version, stage_key, write_manifest
from alignment.config import DataSpec, ModelSpec
from alignment.stages import spec
from flows.sft_to_dpo import SftToDpoConfigs


def artifact_key(stage, config):
    return spec(stage).key(config)


def test_key_depends_on_content_not_path(tmp_path, tiny_recipe):
    a = SftToDpoConfigs(tiny_recipe).sft()
    same = SftToDpoConfigs(tiny_recipe.model_copy(deep=True)).sft()
    assert artifact_key("sft", a) == artifact_key("sft", same)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(open(a.data.path, "rb").read())
    moved = a.model_copy(update={"data": DataSpec(path=str(copy), max_rows=a.data.max_rows)})
    assert artifact_key("sft", moved) == artifact_key("sft", a), "same bytes elsewhere: same key"
    copy.write_text(copy.read_text() + copy.read_text().splitlines()[0] + "\n")
    assert artifact_key("sft", moved) != artifact_key("sft", a), "edited data: new key"
    assert artifact_key("sft", a.model_copy(update={"refresh_token": "x"})) != artifact_key("sft", a)


def test_downstream_key_uses_upstream_artifact_id(tmp_path, tiny_recipe):
    def fake_artifact(name, artifact_id):
        d = tmp_path / name
        (d / "model").mkdir(parents=True)
        (d / "model" / "config.json").write_text("{}")
        (d / MANIFEST).write_text(json.dumps({"artifact_id": artifact_id}))
        return str(d)

    one, moved, other = fake_artifact("a", "sft/1"), fake_artifact("b", "sft/1"), fake_artifact("c", "sft/2")
    key = lambda p: artifact_key("dpo", SftToDpoConfigs(tiny_recipe).dpo(ModelSpec(name=p)))  # noqa: E731
    assert key(one) == key(moved) != key(other)


def test_writer_is_atomic(store):
    with pytest.raises(RuntimeError, match="boom"), store.writer("sft", "k1") as tmp:
        (tmp / "model.bin").write_text("half")
        raise RuntimeError("boom")
    assert not store.path("sft", "k1").exists() and not any((store.root / ".tmp").iterdir())
    with pytest.raises(RuntimeError, match="without writing manifest.json"), store.writer("sft", "k2") as tmp:
        (tmp / "x").write_text("no manifest")
    assert not store.complete("sft", "k2")
    with store.writer("sft", "k3") as tmp:
        write_manifest(tmp, stage="sft", key="k3", identity={}, inputs={}, metrics={"loss": 1.0}, started=0)
    assert store.complete("sft", "k3") and store.load("sft", "k3").metrics == {"loss": 1.0}


def test_stage_key_is_order_free_and_the_code_version_follows_the_sources(tmp_path):
    import shutil

    from alignment.artifacts import source_hash

    assert stage_key("sft", {"a": 1, "b": 2}) == stage_key("sft", {"b": 2, "a": 1}) != stage_key("dpo", {"a": 1, "b": 2})
    lib = Path(__import__("alignment").__file__).parent
    copy = tmp_path / "alignment"
    shutil.copytree(lib, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_hash(copy) == source_hash(lib) == code_version().split("+")[1], "a copy hashes the same"
    (copy / "stages" / "sft.py").write_text((copy / "stages" / "sft.py").read_text() + "\n# edited\n")
    assert source_hash(copy) != source_hash(lib), "an edit anywhere in alignment/ changes the code version"


def test_builtin_model_identity_needs_no_weights():
    from alignment.models import model_identity

    assert model_identity(ModelSpec())["gguf_sha256"].startswith("b179c952")
    assert model_identity(ModelSpec(name="org/model", revision="v1")) == {"dtype": "auto", "hub": "org/model",
                                                                           "revision": "v1"}


def test_key_survives_a_json_round_trip(tiny_recipe):
    """Flow parameters come back from the server as JSON: 300 and 300.0 must hash the same."""
    from alignment.config import SftToDpoRecipe
    from flows.evaluation import calibrate_config, respond_config

    again = SftToDpoRecipe.model_validate_json(tiny_recipe.model_dump_json())
    for stage in ("sft", "dpo"):
        assert artifact_key(stage, SftToDpoConfigs(tiny_recipe).training()[stage]) == \
            artifact_key(stage, SftToDpoConfigs(again).training()[stage])
    assert artifact_key("respond", respond_config(tiny_recipe, tiny_recipe.model)) == \
        artifact_key("respond", respond_config(again, again.model))
    assert artifact_key("calibrate", calibrate_config(tiny_recipe)) == artifact_key("calibrate", calibrate_config(again))
    assert stage_key("x", {"a": 300}) == stage_key("x", {"a": 300.0}) != stage_key("x", {"a": 300.5})
