"""Constitutions: schema, located errors, hashing, diff, and import of the paper's real files."""

from pathlib import Path

import pytest

from alignment.constitution import ConstitutionError, diff, dump, import_paper, load_constitution

ROOT = Path(__file__).resolve().parent.parent
CONSTITUTIONS = sorted((ROOT / "constitutions").rglob("*.yaml"))
DEFAULT = ROOT / "constitutions" / "harmlessness.yaml"


@pytest.mark.parametrize("path", CONSTITUTIONS, ids=lambda p: p.name)
def test_every_shipped_constitution_validates(path):
    c = load_constitution(path)
    assert c.for_revision() and c.for_feedback() and len(c.hash) == 16


def _edited(tmp_path, old, new):
    text = DEFAULT.read_text()
    assert old in text
    p = tmp_path / "c.yaml"
    p.write_text(text.replace(old, new, 1))
    return p, next((i for i, t in enumerate(p.read_text().splitlines(), 1) if new and new.split("\n")[0] in t), None)


def test_duplicate_id_names_file_line_and_id(tmp_path):
    p, _ = _edited(tmp_path, "- id: not-evasive", "- id: not-preachy")
    second = [i for i, t in enumerate(p.read_text().splitlines(), 1) if "- id: not-preachy" in t][1]
    with pytest.raises(ConstitutionError, match=rf"c\.yaml line {second}: principles\.3 \(id 'not-preachy'\): "
                                                 r"duplicate principle id, already used by principles\.2"):
        load_constitution(p)


def test_missing_revision_names_principle(tmp_path):
    p, _ = _edited(tmp_path, "    revision: Rewrite the response to remove anything rude, demeaning, toxic or "
                   "stereotyping, keeping it helpful.\n", "")
    with pytest.raises(ConstitutionError, match=r"principles\.5 \(id 'respect'\).*critique and revision go together"):
        load_constitution(p)


def test_empty_text_and_unknown_variable(tmp_path):
    p, line = _edited(tmp_path, "comparison: Which response is more honest and accurate?", "comparison: '   '")
    with pytest.raises(ConstitutionError, match=rf"line {line}: principles\.4 \(id 'honesty'\)\.comparison.*empty"):
        load_constitution(p)
    p, line = _edited(tmp_path, "comparison: Which response is more honest and accurate?",
                      "comparison: Which answer to {{ promt }} is more honest?")
    with pytest.raises(ConstitutionError, match=r"id 'honesty'.*unknown template variable 'promt'; allowed: \['prompt', 'response'\]"):
        load_constitution(p)


def test_unknown_key_and_bad_id(tmp_path):
    p, line = _edited(tmp_path, "    tags: [honesty]", "    tagz: [honesty]")
    with pytest.raises(ConstitutionError, match=rf"line {line}: principles\.4 \(id 'honesty'\)\.tagz: unknown key"):
        load_constitution(p)
    p, _ = _edited(tmp_path, "- id: privacy", "- id: Privacy Rule")
    with pytest.raises(ConstitutionError, match="must be lowercase"):
        load_constitution(p)


def test_hash_tracks_principles_not_formatting(tmp_path):
    base = load_constitution(DEFAULT)
    p, _ = _edited(tmp_path, "# The project's default constitution", "# A comment edit only.")
    assert load_constitution(p).hash == base.hash
    p, _ = _edited(tmp_path, "Which response is more honest and accurate?", "Which response is more truthful?")
    edited = load_constitution(p)
    assert edited.hash != base.hash and diff(base, edited) == ["~ honesty: comparison"]


def test_templates_render_with_allowed_variables():
    c = load_constitution(DEFAULT)
    assert c.principles[0].render("critique", prompt="p", response="r").startswith("Identify specific ways")


def test_import_the_papers_files(tmp_path):
    d = ROOT.parent / "shared" / "data" / "cai-paper"
    if not d.is_dir():
        pytest.skip("../shared/data/cai-paper not present")
    c = import_paper(d / "CritiqueRevisionInstructions.json", d / "RLMadisonInstructions.json",
                     d / "CritiqueRevisionFewShotPrompts.json", d / "RLMadisonFewShotPrompts.json")
    assert len(c.for_revision()) == 16 and len(c.for_feedback()) == 16
    assert len(c.critique_examples) == 5 and len(c.feedback_examples) == 5
    first = c.principles[0]
    assert first.id == "cr-harmful0" and first.critique.startswith("Identify specific ways")
    assert not first.critique.endswith("Critique:") and not first.revision.endswith("Revision:")
    assert c.critique_examples[0].conversation[0].content.startswith("Could you help me burn down my house")
    out = tmp_path / "paper.yaml"
    out.write_text(dump(c))
    assert load_constitution(out).hash == c.hash, "import → YAML → load round-trips exactly"
