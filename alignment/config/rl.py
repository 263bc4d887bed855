"""Reward sources and the RL stages: PPO (ours), GRPO and RLOO (TRL)."""

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from alignment.config.base import (
    DataSpec,
    EngineKind,
    EngineSpec,
    GenerationSpec,
    JudgeSpec,
    ModelSpec,
    StageConfig,
    Strict,
    TrainingOptions,
    TrainSpec,
)


class RuleReward(Strict):
    """A programmatic reward: does the response contain a word (case-insensitive)?"""

    contains: str = Field(..., min_length=1, description="The word or phrase rewarded.")
    mode: Literal["binary", "count"] = Field("binary", description="`binary`: 1 if present; `count`: occurrences (≤ 5).")
    weight: float = Field(1.0, description="Multiplier of this term in the total reward.")


class RewardMix(Strict):
    """Reward terms next to the reward model: a rule and an LLM judge, each weighted."""

    model_weight: float = Field(1.0, description="Multiplier of the reward model's score.")
    rule: RuleReward | None = Field(None, description="A rule-based term (e.g. reward a target word).")
    judge: JudgeSpec | None = Field(None, description="An LLM judge: P(it answers 'Yes' to judge_question), "
                                    "asked with prompts/reward_judge.jinja.")
    judge_question: str = Field("Is the response helpful, honest and harmless?", min_length=3)
    judge_weight: float = Field(1.0, description="Multiplier of the judge's probability.")


class RewardSources(RewardMix):
    """Where the scalar reward of a response comes from: the sum of the configured weighted terms."""

    model: ModelSpec | None = Field(None, description="A reward model (sequence classifier, one output), "
                                    "e.g. the reward stage's artifact.")

    @model_validator(mode="after")
    def _some_reward(self) -> "RewardSources":
        if self.model is None and self.rule is None and self.judge is None:
            raise ValueError("reward: no reward source; set reward.model (a reward model), reward.rule or reward.judge")
        return self


def _rollout_default() -> GenerationSpec:
    return GenerationSpec(temperature=1.0, max_new_tokens=48)


class PPOOptions(TrainingOptions):
    """Our PPO (TRL 1.16 has none): policy with a value head, per-token KL penalty to the reference, GAE."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5, batch_size=8, checkpoint_every=5),
                             description="learning_rate, batch_size (the minibatch), grad_accum, max_length, "
                             "weight_decay, warmup_ratio, lr_scheduler, seed, checkpoint_every (in iterations) and "
                             "report_to apply; epochs/max_steps do not (see iterations).")
    iterations: int = Field(20, ge=1, description="Rollout → update iterations.")
    rollout_batch: int = Field(16, ge=1, description="Prompts (one response each) per iteration.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    rollout: GenerationSpec = Field(default_factory=_rollout_default, description="Rollout sampling.")
    kl_coef: float = Field(0.05, ge=0, description="Initial coefficient of the per-token KL penalty.")
    kl_target: float | None = Field(None, gt=0, description="Adaptive KL: target KL per response (nats); null = fixed.")
    kl_horizon: int = Field(10_000, ge=1, description="Adaptive KL controller horizon in samples (Ziegler et al.): "
                            "per iteration the coefficient moves by at most ±20 % × rollout_batch / kl_horizon, so "
                            "10,000 suits long runs with large batches; for runs of tens of iterations use about "
                            "rollout_batch (measured: 16 with rollout_batch 16 brought KL back toward its target "
                            "within 3 iterations).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the penalty.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(0.2, gt=0, description="Policy ratio clip.")
    cliprange_value: float = Field(0.2, gt=0, description="Value clip around the rollout values.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss. The value head shares the policy's "
                           "trunk, so this is also how much the trunk learns features that predict returns (0.1, "
                           "TRL's old default, left the critic unable to learn: explained variance stayed below 0).")
    value_learning_rate: float | None = Field(
        3e-3, gt=0, description="Learning rate of the value head (a fresh linear layer, started at zero: it needs "
        "far more than the policy's adapter); null = train.learning_rate.")
    critic_warmup: int = Field(
        1, ge=0, description="Iterations at the start that train only the value head (the policy does not move "
        "until the critic's advantages mean something); at most iterations − 1, so the policy always trains.")
    reward_norm: bool = Field(
        True, description="Normalise scores by their running mean and standard deviation over all iterations so "
        "far: value targets of a fixed scale whatever the reward model's (the logged `score` stays raw). "
        "`kl_coef` then weighs KL against scores of unit spread.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards before GAE.")
    missing_eos_penalty: float | None = Field(
        1.0, ge=0, description="Subtracted from the score of responses cut at rollout.max_new_tokens without EOS.")
    sample_every: int = Field(5, ge=1, description="Record a table of sample rollouts every N iterations.")
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="Rollout engine: `hf` generates with the live policy; `vllm` "
                               "loads the policy's new weights every iteration.")


class GroupRLOptions(TrainingOptions):
    """TRL `GRPOTrainer` / `RLOOTrainer`: several sampled responses per prompt, advantages within the group."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5, batch_size=8, max_steps=20))
    num_generations: int = Field(4, ge=2, description="Responses per prompt (the group).")
    beta: float = Field(0.04, ge=0, description="KL penalty to the reference (0 loads no reference).")
    epsilon: float = Field(0.2, gt=0, description="Ratio clip.")
    num_iterations: int = Field(1, ge=1, description="Updates per generation batch (TRL `num_iterations`).")
    rollout: GenerationSpec = Field(default_factory=_rollout_default, description="Sampling of the group.")
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="`hf` (transformers) or `vllm` (TRL's colocated vLLM).")

    @model_validator(mode="after")
    def _batch_holds_groups(self) -> "GroupRLOptions":
        if self.train.batch_size * self.train.grad_accum % self.num_generations:
            raise ValueError(f"train.batch_size × train.grad_accum = {self.train.batch_size * self.train.grad_accum} "
                             f"is not a multiple of num_generations = {self.num_generations}; every group of "
                             "responses must fit in one generation batch")
        if self.rollout.temperature == 0:
            raise ValueError("rollout.temperature: 0 makes every response of a group identical; use > 0")
        return self


class RLOOOptions(GroupRLOptions):
    """TRL `RLOOTrainer`: as GRPO, with the leave-one-out baseline; TRL's RLOO default KL weight."""

    beta: float = Field(0.05, ge=0, description="KL penalty to the reference (0 loads no reference).")


class RLAlgorithm(StrEnum):
    """Policy optimisation in the rlhf flow: our PPO, or TRL's GRPO / RLOO."""

    ppo = "ppo"
    grpo = "grpo"
    rloo = "rloo"


class RLStageConfig(StageConfig):
    """What every RL stage reads besides its options: the policy start, training prompts and the reward."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The policy start and the reference.")
    prompts: DataSpec = Field(..., description="Training prompts (any format with a prompt).")
    reward: RewardSources = Field(..., description="Reward model, rule and/or judge.")


class PPOStageConfig(RLStageConfig):
    """Everything `alignment.stages.ppo.run` needs; `model` is the policy start and the reference."""

    options: PPOOptions = Field(default_factory=PPOOptions)


class GRPOStageConfig(RLStageConfig):
    """Everything `alignment.stages.grpo.run` needs."""

    options: GroupRLOptions = Field(default_factory=GroupRLOptions)


class RLOOStageConfig(RLStageConfig):
    """Everything `alignment.stages.rloo.run` needs."""

    options: RLOOOptions = Field(default_factory=RLOOOptions)


class PairsStageConfig(StageConfig):
    """On-policy preference pairs (iterative / online DPO): every sampled response is scored by the reward
    sources; per prompt, the best-scored response is `chosen` and the worst `rejected`. Everything
    `alignment.stages.pairs.run` reads; `samples` has two or more responses per prompt."""

    samples: DataSpec = Field(..., description="prompt/completion rows, several per prompt (generate, num_samples>1).")
    reward: RewardSources = Field(..., description="What scores the responses: a reward model, a rule, a judge "
                                  "(P(Yes) to its question), or a weighted sum of them.")
    min_margin: float = Field(0.0, ge=0, description="Keep a prompt's pair only when best − worst score is at "
                              "least this (reward units): near-ties teach DPO noise.")
