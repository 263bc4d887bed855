"""The "before" column: the start model's responses to the held-out prompts, nothing trained."""

from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import BaselineStageConfig
from alignment.data import load_data
from alignment.generation import answer_prompts
from alignment.models import load_model, load_tokenizer
from alignment.stages.common import RunContext, cli, run_stage

STAGE = "baseline"


def generate(out: Path, prompts, context: RunContext, config: BaselineStageConfig) -> dict[str, Any]:
    tok = load_tokenizer(config.model)
    model = load_model(config.model)
    answer_prompts(model, tok, prompts.rows, config.generation, out)
    if context.progress:
        context.progress(1.0, {})
    return {"prompts": len(prompts.rows)}


def run(config: BaselineStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: load_data(config.eval_prompts, "prompts"),
                     lambda out, prompts, ctx: generate(out, prompts, ctx, config), context)


if __name__ == "__main__":
    cli(BaselineStageConfig, run, STAGE)
