"""Constitutions: editable YAML files of principles with stable ids, a version and a content hash.

A principle carries a critique request and a revision request (for SL-CAI critique → revision) and/or a
comparison question (for RL-CAI feedback). Texts may use the template variables ``{{ prompt }}`` and
``{{ response }}``; anything else is an error. Validation names the file, the line, the principle id and
the problem. ``load_constitution(path).hash`` changes when any principle changes (not when comments or
formatting do), and every generated row records it with the principle ids.

``import_paper(...)`` converts the Constitutional AI paper's own files (Bai et al. 2022,
``CritiqueRevisionInstructions.json``, ``RLMadisonInstructions.json`` and the few-shot files).
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateSyntaxError, nodes
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignment.config.loader import _line_of, describe, read_yaml
from alignment.prompts import environment

TEMPLATE_VARS = {"prompt", "response"}
ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ConstitutionError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    role: str = Field(..., pattern="^(system|user|assistant)$")
    content: str = Field(..., min_length=1)


class CritiqueExample(_Strict):
    """A worked critique → revision: the conversation ends with the response being critiqued."""

    conversation: list[Message] = Field(..., min_length=2)
    critique: str = Field(..., min_length=1)
    revision: str = Field(..., min_length=1)


class FeedbackExample(_Strict):
    prompt: str = Field(..., min_length=1)
    better: str = Field(..., min_length=1)
    worse: str = Field(..., min_length=1)


def plain_substitutions(text: str) -> None:
    """Principle texts are data, not programs: only plain ``{{ prompt }}`` / ``{{ response }}`` substitutions.
    Attribute access, filters, tests, loops, calls, blocks and other variables are refused here, at load,
    with the principle id, instead of failing or hanging mid-run once the models are loaded."""
    try:
        tree = environment().parse(text)
    except TemplateSyntaxError as e:
        raise ValueError(f"not a valid template ({e.message}); write {{{{ prompt }}}} or {{{{ response }}}}") from None
    stack = list(tree.iter_child_nodes())
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Name):
            if node.name not in TEMPLATE_VARS:
                raise ValueError(f"unknown template variable {node.name!r}; allowed: {sorted(TEMPLATE_VARS)}")
        elif isinstance(node, nodes.Output | nodes.TemplateData):
            stack.extend(node.iter_child_nodes())
        else:
            kind = type(node).__name__.lower()
            raise ValueError(f"only plain substitutions {{{{ prompt }}}} and {{{{ response }}}} are allowed in "
                             f"principle texts; found a {kind} (no attribute access, filters, loops, calls or blocks)")


class Principle(_Strict):
    id: str = Field(..., description="Stable id (lowercase letters, digits, '-', '_'): recorded in every row.")
    critique: str | None = Field(None, description="Critique request for SL-CAI.")
    revision: str | None = Field(None, description="Revision request for SL-CAI (with `critique`).")
    comparison: str | None = Field(None, description="Comparison question for RL-CAI feedback.")
    tags: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID.match(v):
            raise ValueError(f"id {v!r} must be lowercase letters, digits, '-' or '_'")
        return v

    @field_validator("critique", "revision", "comparison")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                raise ValueError("text is empty; write the request or remove the key")
            plain_substitutions(v)
        return v

    @model_validator(mode="after")
    def _complete(self) -> "Principle":
        if (self.critique is None) != (self.revision is None):
            raise ValueError("critique and revision go together: give both or neither")
        if self.critique is None and self.comparison is None:
            raise ValueError("a principle needs a critique + revision, a comparison, or all three")
        return self

    def render(self, field: str, **variables: str) -> str:
        return environment().from_string(getattr(self, field)).render(**variables).strip()


class Constitution(_Strict):
    name: str = Field(..., min_length=1)
    version: str = Field(..., min_length=1, description="Your version label; the content hash is separate.")
    description: str = ""
    principles: list[Principle] = Field(..., min_length=1)
    critique_examples: list[CritiqueExample] = Field(default_factory=list)
    feedback_examples: list[FeedbackExample] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "Constitution":
        seen: dict[str, int] = {}
        for i, p in enumerate(self.principles):
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r} (principles {seen[p.id]} and {i})")
            seen[p.id] = i
        return self

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    def for_revision(self) -> list[Principle]:
        return [p for p in self.principles if p.critique is not None]

    def for_feedback(self) -> list[Principle]:
        return [p for p in self.principles if p.comparison is not None]


def _with_ids(message: str, data: dict[str, Any]) -> str:
    """Name the principle id next to `principles.N` in error messages."""
    principles = data.get("principles") if isinstance(data, dict) else None

    def named(m: re.Match) -> str:
        i = int(m.group(1))
        pid = principles[i].get("id") if isinstance(principles, list) and i < len(principles) and \
            isinstance(principles[i], dict) else None
        return f"principles.{i}" + (f" (id {pid!r})" if pid else "")

    return re.sub(r"principles\.(\d+)", named, message)


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    data, root = read_yaml(path, ConstitutionError)
    if not isinstance(data, dict):
        raise ConstitutionError(f"{path}: expected a mapping with name, version and principles")
    _check_unique_ids(path, root, data)
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise ConstitutionError(_with_ids(describe(e, Constitution, str(path), root), data)) from None


def _check_unique_ids(path: Path, root: yaml.Node, data: dict[str, Any]) -> None:
    principles = data.get("principles")
    if not isinstance(principles, list):
        return
    first: dict[str, int] = {}
    for i, p in enumerate(principles):
        pid = p.get("id") if isinstance(p, dict) else None
        if pid is None:
            continue
        if pid in first:
            j = first[pid]
            raise ConstitutionError(
                f"{path} line {_line_of(root, ('principles', i, 'id'))}: principles.{i} (id {pid!r}): duplicate "
                f"principle id, already used by principles.{j} on line {_line_of(root, ('principles', j, 'id'))}. "
                "Fix: give each principle its own id (ids are recorded in every generated row)")
        first[pid] = i


def diff(a: Constitution, b: Constitution) -> list[str]:
    """Principle-level differences: added, removed and changed ids (with the changed fields)."""
    pa, pb = {p.id: p for p in a.principles}, {p.id: p for p in b.principles}
    out = [f"+ {i}" for i in pb if i not in pa] + [f"- {i}" for i in pa if i not in pb]
    for i in pa.keys() & pb.keys():
        fields = [f for f in ("critique", "revision", "comparison", "tags") if getattr(pa[i], f) != getattr(pb[i], f)]
        if fields:
            out.append(f"~ {i}: {', '.join(fields)}")
    for f in ("name", "version", "description"):
        if getattr(a, f) != getattr(b, f):
            out.append(f"~ {f}: {getattr(a, f)!r} -> {getattr(b, f)!r}")
    if len(a.critique_examples) != len(b.critique_examples) or a.critique_examples != b.critique_examples:
        out.append("~ critique_examples")
    if a.feedback_examples != b.feedback_examples:
        out.append("~ feedback_examples")
    return sorted(out)


_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def _split_example(text: str) -> CritiqueExample:
    parts = _TURN.split(text)
    pairs = [(k, v.strip()) for k, v in zip(parts[1::2], parts[2::2], strict=True)]
    conv = [Message(role="user" if k == "Human" else "assistant", content=v)
            for k, v in pairs if k in ("Human", "Assistant") and v]
    get = {k: v for k, v in pairs}
    return CritiqueExample(conversation=conv, critique=get["Critique"], revision=get["Revision"])


def import_paper(critique_revision: Path, feedback: Path | None = None, critique_few_shot: Path | None = None,
                 feedback_few_shot: Path | None = None, name: str = "cai-paper") -> Constitution:
    """The paper's files → a Constitution (critique/revision pairs and feedback principles kept apart)."""
    principles = []
    for key, item in json.loads(Path(critique_revision).read_text()).items():
        principles.append(Principle(
            id=f"cr-{key}", tags=["paper", "critique-revision"],
            critique=item["prompt"][0].strip().removeprefix("CritiqueRequest:").removesuffix("Critique:").strip(),
            revision=item["edit_request"].strip().removeprefix("RevisionRequest:").removesuffix("Revision:").strip()))
    if feedback:
        for i, text in enumerate(json.loads(Path(feedback).read_text())):
            principles.append(Principle(id=f"fb-{i:02d}", tags=["paper", "feedback"],
                                        comparison=text.strip().removesuffix("Options:").strip()))
    examples = [_split_example(t) for t in json.loads(Path(critique_few_shot).read_text())] if critique_few_shot else []
    feedback_examples = []
    if feedback_few_shot:
        for item in json.loads(Path(feedback_few_shot).read_text()):
            prompt = item["prompt"].replace("\n\nHuman:", "").replace("\n\nAssistant:", "").strip()
            feedback_examples.append(FeedbackExample(prompt=prompt, better=item["corrects"][0].strip(),
                                                     worse=item["incorrects"][0].strip()))
    return Constitution(name=name, version="paper-2022", principles=principles,
                        description="Imported from the Constitutional AI paper (Bai et al. 2022, arXiv:2212.08073).",
                        critique_examples=examples, feedback_examples=feedback_examples)


def dump(constitution: Constitution) -> str:
    data = constitution.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
