"""Responses of a model to a prompt set, written as prompt/completion rows (``completions.jsonl``) that
the data layer reads back as SFT-style data (e.g. the initial answers that SL-CAI critiques)."""

import json
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import GenerateStageConfig
from alignment.data import LoadedData, load_data
from alignment.generation import load_engine
from alignment.stages.contract import RunContext, StageSpec, cli

SPEC = StageSpec(
    name="generate",
    config=GenerateStageConfig,
    outputs={"completions": "completions.jsonl"},
    headline=("prompts", "samples_per_prompt", "mean_tokens", "empty"),
)


def write_completions(path: Path, prompts: list, texts: list[str], extra: list[dict] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (p, t) in enumerate(zip(prompts, texts, strict=True)):
            row = {"prompt": p, "completion": [{"role": "assistant", "content": t}], **((extra or [{}] * len(texts))[i])}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def validate(config: GenerateStageConfig) -> LoadedData:
    return load_data(config.prompts, "prompts")


def generate(out: Path, config: GenerateStageConfig, data: LoadedData, context: RunContext) -> dict[str, Any]:
    prompts = [r["prompt"] for r in data.rows]
    engine = load_engine(config.model, config.engine)
    try:  # one batched pass per sample, each with its own seed
        passes = [engine.generate(prompts, config.generation.model_copy(update={"seed": config.generation.seed + k}))
                  for k in range(config.num_samples)]
    finally:
        engine.close()
    completions = [p[i] for i in range(len(prompts)) for p in passes]  # grouped by prompt
    write_completions(out / SPEC.outputs["completions"], [p for p in prompts for _ in passes], [c.text for c in completions],
                      [{"sample": k} for _ in prompts for k in range(len(passes))])
    if context.progress:
        context.progress(1.0, {})
    tokens = [c.n_tokens for c in completions]
    return {"prompts": len(prompts), "samples_per_prompt": config.num_samples, "engine": engine.name, "mean_tokens": sum(tokens) / max(len(tokens), 1),
            "empty": sum(not c.text for c in completions)}


def run(config: GenerateStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, generate(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
