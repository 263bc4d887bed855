"""SL-CAI critique → revision: seeded principle sampling, few-shot turns, degenerate-revision filtering
and provenance, with a scripted engine (exact behaviour) and once end to end on the tiny model."""

import json
from pathlib import Path

import pytest

from alignment.config import (
    ConstitutionSpec,
    CritiqueReviseStageConfig,
    DataSpec,
    EngineKind,
    EngineSpec,
    GenerateStageConfig,
    GenerationSpec,
    ModelSpec,
)
from alignment.constitution import load_constitution
from alignment.generation.base import Completion
from alignment.stages import critique_revise, generate
from alignment.stages.critique_revise import degenerate, sample_principle

ROOT = Path(__file__).resolve().parent.parent
CONSTITUTION = ROOT / "constitutions" / "harmlessness.yaml"


def test_principle_sampling_is_seeded_and_order_independent():
    ps = load_constitution(CONSTITUTION).for_revision()
    a = [sample_principle(ps, 7, i, r).id for i in range(20) for r in range(3)]
    b = [sample_principle(ps, 7, i, r).id for i in range(20) for r in range(3)]
    assert a == b and len(set(a)) > 3, "same seed → same principles, and they vary"
    assert a != [sample_principle(ps, 8, i, r).id for i in range(20) for r in range(3)]


@pytest.mark.parametrize("rev,prev,reason", [("", "x", "empty"), ("  Same  text ", "same text", "unchanged"),
                                              ("go now " * 6, "x", "repeated"), ("A better answer.", "bad", None),
                                              ("The critique, again.", "bad", "copied"),
                                              ("An example revision.", "bad", "copied")])
def test_degenerate(rev, prev, reason):
    assert degenerate(rev, prev, "the critique,  again.", ("an example revision.",)) == reason


class Scripted:
    """Critiques say which request they saw; revisions depend on the prompt index to hit each filter."""

    name = "scripted"

    def __init__(self):
        self.calls = []

    def generate(self, chats, spec, logprobs=False):
        self.calls.append(chats)
        out = []
        for chat in chats:
            last = chat[-1]["content"]
            prompt = next(m["content"] for m in chat if m["role"] == "user" and m["content"].startswith("P"))
            if "Write the critique only" in last:
                out.append(Completion(text=f"critique of {prompt}"))
            elif prompt == "P0":
                out.append(Completion(text=""))  # empty
            elif prompt == "P1":
                out.append(Completion(text=chat[-4]["content"]))  # the text it was asked to revise
            else:
                out.append(Completion(text=f"safe answer to {prompt}"))
        return out

    def close(self):
        pass


@pytest.fixture
def initial(tmp_path):
    path = tmp_path / "initial.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"P{i}"}],
                                        "completion": [{"role": "assistant", "content": f"bad answer {i}"}]}) + "\n"
                            for i in range(4)))
    return DataSpec(path=str(path))


def test_rounds_filters_and_provenance(initial, store, monkeypatch):
    engine = Scripted()
    monkeypatch.setattr(critique_revise, "load_engine", lambda *a, **k: engine)
    cfg = CritiqueReviseStageConfig(model=ModelSpec(name="tiny-random"), initial=initial,
                                    constitution=ConstitutionSpec(path=str(CONSTITUTION)),
                                    options={"rounds": 2, "few_shot": 1})
    r = critique_revise.run(cfg)
    m = r.metrics
    # P0: empty twice; P1: returns its input twice; P2, P3: revised in round 0, then the same text again
    assert m["revisions_total"] == 8 and m["filtered_empty"] == 2 and m["filtered_unchanged"] == 4
    assert m["revisions_kept"] == 2 and m["prompts_with_revision"] == 2
    rows = [json.loads(x) for x in Path(Path(r.path) / "revisions.jsonl").read_text().splitlines()]
    c = load_constitution(CONSTITUTION)
    assert all(row["constitution_hash"] == c.hash and len(row["rounds"]) == 2 for row in rows)
    assert rows[2]["final"] == "safe answer to P2" and rows[0]["final"] == "bad answer 0" and not rows[0]["kept"]
    assert [x["principle_id"] for x in rows[3]["rounds"]] == [sample_principle(c.for_revision(), 0, 3, k).id
                                                              for k in range(2)]
    sft = [json.loads(x) for x in Path(Path(r.path) / "sft.jsonl").read_text().splitlines()]
    assert [s["prompt"][0]["content"] for s in sft] == ["P2", "P3"] and sft[0]["constitution_hash"] == c.hash
    stats = json.loads((Path(r.path) / "principles.json").read_text())
    assert sum(v["used"] for v in stats.values()) == 8
    first_chat = engine.calls[0][0]
    assert first_chat[0]["content"] in {m.content for ex in c.critique_examples for m in ex.conversation}, \
        "a worked example comes first"


def test_editing_a_principle_changes_the_key_not_the_initial_responses(initial, tmp_path):
    from alignment.stages import spec

    artifact_key = lambda stage, config: spec(stage).key(config)  # noqa: E731

    edited = tmp_path / "c.yaml"
    edited.write_text(CONSTITUTION.read_text().replace("Quote the problem parts.", "Quote them."))
    cfg = CritiqueReviseStageConfig(model=ModelSpec(name="tiny-random"), initial=initial)
    other = cfg.model_copy(update={"constitution": ConstitutionSpec(path=str(edited))})
    assert artifact_key("critique_revise", cfg) != artifact_key("critique_revise", other)
    moved = tmp_path / "same.yaml"
    moved.write_text("# only a comment differs\n" + CONSTITUTION.read_text())
    same = cfg.model_copy(update={"constitution": ConstitutionSpec(path=str(moved))})
    assert artifact_key("critique_revise", cfg) == artifact_key("critique_revise", same)


def test_generate_then_critique_revise_on_the_tiny_model(store):
    hf = EngineSpec(kind=EngineKind.hf)
    g = generate.run(GenerateStageConfig(model=ModelSpec(name="tiny-random"), engine=hf,
                                         prompts=DataSpec(path="data/redteam_prompts.jsonl", max_rows=3),
                                         generation=GenerationSpec(max_new_tokens=6)))
    assert g.metrics["prompts"] == 3
    r = critique_revise.run(CritiqueReviseStageConfig(
        model=ModelSpec(name="tiny-random"), generation=GenerationSpec(max_new_tokens=6),
        initial=DataSpec(path=str(Path(g.path) / "completions.jsonl")), options={"engine": hf, "rounds": 1}))
    assert r.metrics["revisions_total"] == 3 and (Path(r.path) / "sft.jsonl").is_file()
