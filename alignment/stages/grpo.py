"""GRPO with TRL ``GRPOTrainer`` (and, through ``group_spec``/``run_group``, RLOO with ``RLOOTrainer``):
several sampled responses per prompt, advantages within the group (``alignment.rl.group`` trains).

Output: ``model/``, ``adapter/`` (LoRA), ``curves.jsonl`` (TRL's logged metrics: reward, KL, entropy,
clip ratios, lengths), ``manifest.json``. Held-out answers and their reward, KL and length drift are the
``respond`` and ``evaluate`` steps' job.
"""

from alignment import training
from alignment.artifacts import StageResult
from alignment.config import GRPOStageConfig, RLAlgorithm
from alignment.rl.group import train_group
from alignment.rl.stage import validate_rl
from alignment.stages.contract import RunContext, StageSpec, cli


def group_spec(algorithm: RLAlgorithm, config: type) -> StageSpec:
    return StageSpec(
        name=algorithm.value,
        config=config,
        templates=lambda c: ("reward_judge.jinja",) if c.reward.judge is not None else (),
        outputs={"model": "model", "adapter": "adapter", "curves": "curves.jsonl"},
        optional_outputs=("adapter",),
        curves=("reward", "kl", "entropy", "completions/mean_length"),
        headline=("train_reward_first3", "train_reward_last3", "train_kl_last3", "train_seconds"),
        progress=("reward", "kl"),
        unhashed=training.UNHASHED,
    )


def run_group(spec: StageSpec, algorithm: RLAlgorithm, config, context: RunContext | None) -> StageResult:
    with spec.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate_rl(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, train_group(out, job.config, inputs, job.context.progress, algorithm, job.checkpoints,
                                        training.run_name(job.context.run, spec.name, job.key)))
        return job.result


SPEC = group_spec(RLAlgorithm.grpo, GRPOStageConfig)


def run(config: GRPOStageConfig, context: RunContext | None = None) -> StageResult:
    return run_group(SPEC, RLAlgorithm.grpo, config, context)


if __name__ == "__main__":
    cli(SPEC, run)
