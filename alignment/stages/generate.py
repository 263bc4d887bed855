"""Responses of a model to a prompt set, written as prompt/completion rows (``completions.jsonl``) that
the data layer reads back as SFT-style data (e.g. the initial answers that SL-CAI critiques)."""

import json
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import GenerateStageConfig
from alignment.data import load_data
from alignment.generation import load_engine
from alignment.stages.common import RunContext, cli, run_stage

CONFIG = GenerateStageConfig
STAGE = "generate"
OUTPUT = "completions.jsonl"


def write_completions(path: Path, prompts: list, texts: list[str], extra: list[dict] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (p, t) in enumerate(zip(prompts, texts, strict=True)):
            row = {"prompt": p, "completion": [{"role": "assistant", "content": t}], **((extra or [{}] * len(texts))[i])}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out: Path, data, context: RunContext, config: GenerateStageConfig) -> dict[str, Any]:
    prompts = [r["prompt"] for r in data.rows]
    engine = load_engine(config.model, config.engine)
    try:  # one batched pass per sample, each with its own seed
        passes = [engine.generate(prompts, config.generation.model_copy(update={"seed": config.generation.seed + k}))
                  for k in range(config.num_samples)]
    finally:
        engine.close()
    completions = [p[i] for i in range(len(prompts)) for p in passes]  # grouped by prompt
    write_completions(out / OUTPUT, [p for p in prompts for _ in passes], [c.text for c in completions],
                      [{"sample": k} for _ in prompts for k in range(len(passes))])
    if context.progress:
        context.progress(1.0, {})
    tokens = [c.n_tokens for c in completions]
    return {"prompts": len(prompts), "samples_per_prompt": config.num_samples, "engine": engine.name, "mean_tokens": sum(tokens) / max(len(tokens), 1),
            "empty": sum(not c.text for c in completions)}


def run(config: GenerateStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: load_data(config.prompts, "prompts"),
                     lambda out, data, ctx: generate(out, data, ctx, config), context)


if __name__ == "__main__":
    cli(GenerateStageConfig, run, STAGE)
