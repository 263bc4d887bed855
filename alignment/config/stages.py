"""Stage configs of the supervised, preference, generation, evaluation and Constitutional AI stages."""

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from alignment.config.base import (
    AdapterSpec,
    ConstitutionSpec,
    DataSpec,
    EngineKind,
    EngineSpec,
    EvaluateSettings,
    JudgeSpec,
    ModelSpec,
    StageInput,
    Strict,
    TrainSpec,
)


class SFTOptions(Strict):
    """How SFT trains (TRL `SFTTrainer`), whatever data it is given."""

    train: TrainSpec = Field(default_factory=TrainSpec)
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    assistant_only_loss: bool = Field(True, description="Train only on completion/assistant tokens.")
    mix_data: DataSpec | None = Field(None, description="Extra SFT data mixed in (e.g. helpful data next to "
                                      "Constitutional AI revisions, so helpfulness is kept).")
    mix_ratio: float = Field(0.5, ge=0, lt=1, description="Share of training rows drawn from mix_data.")


class SFTSettings(SFTOptions):
    """The SFT part of a recipe."""

    data: DataSpec = Field(..., description="Instruction data: `messages` or `prompt`/`completion` rows.")


class DPOLoss(StrEnum):
    """A subset of TRL's DPO `loss_type` values, the ones documented as stable."""

    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    robust = "robust"
    apo_zero = "apo_zero"
    apo_down = "apo_down"


class DPOOptions(Strict):
    """How DPO trains (TRL `DPOTrainer`), whatever pairs it is given."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5))
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    beta: float = Field(0.1, gt=0, description="KL strength of DPO (higher stays closer to the reference).")
    loss_type: DPOLoss = Field(DPOLoss.sigmoid, description="DPO loss variant (TRL `loss_type`).")


class DPOSettings(DPOOptions):
    """The DPO part of a recipe."""

    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs for preference accuracy.")


class SFTStageConfig(StageInput, SFTSettings):
    """Everything `alignment.stages.sft.run` needs."""


class DPOStageConfig(StageInput, DPOSettings):
    """Everything `alignment.stages.dpo.run` needs. `model` is the policy start (and the reference)."""


class BaselineStageConfig(StageInput):
    """Responses of an untrained model to the held-out prompts (the "before" column)."""

    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="Generation engine for the responses.")

    @model_validator(mode="after")
    def _needs_prompts(self) -> "BaselineStageConfig":
        if self.eval_prompts is None:
            raise ValueError("eval_prompts: the baseline stage needs held-out prompts; set eval_prompts.path")
        return self


class EvaluateStageConfig(StageInput, EvaluateSettings):
    """Everything `alignment.stages.evaluate.run` needs. `model` is the policy, `reference` its baseline."""

    reference: ModelSpec = Field(..., description="The model the policy is compared with (e.g. the SFT model).")


class GenerateStageConfig(StageInput):
    """Responses of `model` to `prompts` (e.g. initial answers to red-team prompts for SL-CAI)."""

    prompts: DataSpec = Field(..., description="Prompts to answer (any format with a prompt).")
    engine: EngineSpec = Field(default_factory=EngineSpec)
    num_samples: int = Field(1, ge=1, le=16, description="Responses per prompt (seeds seed, seed+1, ...).")

    @model_validator(mode="after")
    def _sampling(self) -> "GenerateStageConfig":
        if self.num_samples > 1 and self.generation.temperature == 0:
            raise ValueError(f"num_samples = {self.num_samples} needs generation.temperature > 0; greedy "
                             "decoding would give the same response every time")
        return self


class CritiqueReviseSettings(Strict):
    """SL-CAI: rounds of critique → revision, one principle sampled per prompt and round (seeded)."""

    rounds: int = Field(2, ge=1, le=8, description="Critique → revision rounds per prompt.")
    few_shot: int = Field(1, ge=0, le=8, description="Worked examples from the constitution shown first.")
    seed: int = Field(0, description="Seed for principle and example sampling.")
    engine: EngineSpec = Field(default_factory=EngineSpec)


class CritiqueReviseStageConfig(StageInput, CritiqueReviseSettings):
    """Everything `alignment.stages.critique_revise.run` needs; `model` writes critiques and revisions."""

    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    initial: DataSpec = Field(..., description="Initial responses: prompt/completion rows (the generate stage).")


class FeedbackSettings(Strict):
    """RL-CAI: a feedback model labels response pairs by multiple choice over sampled principles."""

    judge: JudgeSpec = Field(default_factory=lambda: JudgeSpec(calibration=None))
    principles_per_pair: int = Field(4, ge=1, le=32, description="Principles sampled and ensembled per pair.")
    chain_of_thought: bool = Field(False, description="Judge reasons first; labels then clamped to [0.4, 0.6].")
    min_margin: float = Field(0.0, ge=0, lt=0.5, description="Drop pairs whose ensembled label is within this of 0.5.")
    seed: int = Field(0, description="Seed for principle sampling.")


class FeedbackStageConfig(StageInput, FeedbackSettings):
    """Everything `alignment.stages.feedback.run` needs; `samples` has two or more responses per prompt."""

    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    samples: DataSpec = Field(..., description="prompt/completion rows, several per prompt (generate, num_samples>1).")


class RewardOptions(Strict):
    """How the reward model trains (TRL `RewardTrainer`, Bradley–Terry), whatever pairs it is given."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=1e-4))
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    targets: Literal["auto", "hard", "soft"] = Field(
        "auto", description="`hard`: chosen beats rejected (Bradley–Terry). `soft`: each row's `soft_label` "
        "(P(chosen is better), e.g. from the constitutional-ai feedback stage) is the target of a "
        "cross-entropy loss. `auto`: soft when the rows carry `soft_label`.")
    center_rewards: float | None = Field(
        0.01, ge=0, description="Penalty on the squared mean reward (TRL `center_rewards_coefficient`), so "
        "rewards stay near 0 and PPO's KL penalty keeps its meaning; null turns it off.")
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Without eval_data: share of `data` held out (seeded) for accuracy.")


class RewardSettings(RewardOptions):
    """The reward part of a recipe."""

    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` (optionally "
                           "`soft_label`) or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs; unset holds out `heldout_fraction` of data.")


class RewardStageConfig(StageInput, RewardSettings):
    """Everything `alignment.stages.reward.run` needs; `model` is the base the reward model starts from."""
