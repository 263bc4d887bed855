"""RLOO with TRL ``RLOOTrainer``: like GRPO (``alignment.stages.grpo``, whose run skeleton it shares), but
each response's baseline is the mean reward of the *other* responses to its prompt (leave-one-out)."""

from alignment.artifacts import StageResult
from alignment.config import RLAlgorithm, RLOOStageConfig
from alignment.stages.contract import RunContext, cli
from alignment.stages.grpo import group_spec, run_group

SPEC = group_spec(RLAlgorithm.rloo, RLOOStageConfig)


def run(config: RLOOStageConfig, context: RunContext | None = None) -> StageResult:
    return run_group(SPEC, RLAlgorithm.rloo, config, context)


if __name__ == "__main__":
    cli(SPEC, run)
