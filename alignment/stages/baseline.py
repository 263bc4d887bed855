"""The "before" column: the start model's responses to the held-out prompts, nothing trained."""

from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import BaselineStageConfig
from alignment.data import load_data
from alignment.generation import answer_prompts, load_engine
from alignment.stages.common import RunContext, cli, run_stage

CONFIG = BaselineStageConfig
STAGE = "baseline"


def generate(out: Path, prompts, context: RunContext, config: BaselineStageConfig) -> dict[str, Any]:
    engine = load_engine(config.model, config.engine)
    try:
        answer_prompts(engine, prompts.rows, config.generation, out)
    finally:
        engine.close()
    if context.progress:
        context.progress(1.0, {})
    return {"prompts": len(prompts.rows), "engine": engine.name}


def run(config: BaselineStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: load_data(config.eval_prompts, "prompts"),
                     lambda out, prompts, ctx: generate(out, prompts, ctx, config), context)


if __name__ == "__main__":
    cli(BaselineStageConfig, run, STAGE)
