"""Held-out answers: one model's responses to named prompt sets (held-out, red-team, benign).

These are the before/after columns of the UI's responses table and what ``evaluate`` judges. The key
hashes the model (its artifact id), the prompt files, the generation settings and the engine, nothing
else: a new evaluation prompt reruns this step and ``evaluate``, never a training stage. Output:
``responses.jsonl``, one row per prompt: ``set``, ``prompt`` (chat), ``response``, ``tokens``.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult, read_manifest
from alignment.config import ModelSpec, RespondStageConfig
from alignment.data import load_data
from alignment.generation import load_engine
from alignment.stages.contract import RunContext, StageSpec, cli

SPEC = StageSpec(
    name="respond",
    config=RespondStageConfig,
    outputs={"responses": "responses.jsonl"},
    headline=("mean_tokens",),
)


@dataclass
class RespondInputs:
    sets: dict[str, list[dict[str, Any]]]  # set name → prompt rows ({"prompt": chat})


def validate(config: RespondStageConfig) -> RespondInputs:
    return RespondInputs({name: load_data(spec, "prompts").rows for name, spec in config.sets.items()})


def answer(out: Path, config: RespondStageConfig, inputs: RespondInputs, context: RunContext) -> dict[str, Any]:
    """All sets in one generate call (the engine batches), written grouped by set."""
    order = [(name, row["prompt"]) for name, rows in inputs.sets.items() for row in rows]
    engine = load_engine(config.model, config.engine)
    try:
        completions = engine.generate([chat for _, chat in order], config.generation)
    finally:
        engine.close()
    tokens: dict[str, list[int]] = {name: [] for name in inputs.sets}
    with open(out / SPEC.outputs["responses"], "w", encoding="utf-8") as f:
        for (name, chat), c in zip(order, completions, strict=True):
            tokens[name].append(c.n_tokens)
            f.write(json.dumps({"set": name, "prompt": chat, "response": c.text, "tokens": c.n_tokens},
                               ensure_ascii=False) + "\n")
    if context.progress:
        context.progress(1.0, {})
    every = [n for values in tokens.values() for n in values]
    return {"prompts": len(order), "mean_tokens": sum(every) / len(every), "engine": engine.name,
            **{f"{name}_prompts": len(v) for name, v in tokens.items()},
            **{f"{name}_mean_tokens": sum(v) / len(v) for name, v in tokens.items()}}


def read_responses(artifact: str | Path | StageResult | dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A respond artifact's answers by set, in prompt order."""
    path = SPEC.output(artifact if not isinstance(artifact, str | Path) else {"path": str(artifact)}, "responses")
    out: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["set"], []).append(row)
    return out


def model_of(artifact: str | Path) -> ModelSpec:
    """The model that wrote a respond artifact (from its config), e.g. for evaluate's KL estimate."""
    read_manifest(artifact)
    config = RespondStageConfig.model_validate_json((Path(artifact) / "config.json").read_text())
    return config.model


def run(config: RespondStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, answer(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
