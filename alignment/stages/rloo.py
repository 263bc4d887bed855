"""RLOO with TRL ``RLOOTrainer``: like GRPO (``alignment.stages.grpo``, which holds the shared code), but
each response's baseline is the mean reward of the *other* responses to its prompt (leave-one-out)."""

from alignment.artifacts import StageResult
from alignment.config import RLOOStageConfig
from alignment.stages.common import RunContext, cli, run_stage
from alignment.stages.grpo import train_group
from alignment.stages.ppo import validate_rl

CONFIG = RLOOStageConfig
STAGE = "rloo"


def run(config: RLOOStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: validate_rl(config),
                     lambda out, checked, ctx: train_group(out, checked, ctx, config, STAGE), context)


if __name__ == "__main__":
    cli(RLOOStageConfig, run, STAGE)
