"""Recipes: one model per flow (sft-to-dpo, constitutional-ai, rlhf), each able to build its stage configs."""

from typing import Literal

from pydantic import Field, model_validator

from alignment.config.base import (
    ConstitutionSpec,
    DataSpec,
    EngineSpec,
    EvaluateSettings,
    GenerationSpec,
    ModelSpec,
    Strict,
)
from alignment.config.rl import (
    GroupRLOptions,
    PPOOptions,
    RewardMix,
)
from alignment.config.stages import (
    BaselineStageConfig,
    CritiqueReviseSettings,
    DPOOptions,
    DPOSettings,
    DPOStageConfig,
    EvaluateStageConfig,
    FeedbackSettings,
    RewardOptions,
    RewardSettings,
    SFTOptions,
    SFTSettings,
    SFTStageConfig,
)

STAGES = ("baseline", "sft", "dpo", "evaluate")


class SftToDpoRecipe(Strict):
    """The `sft-to-dpo` flow: base model → SFT → DPO, with held-out responses after each stage."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    eval_prompts: DataSpec = Field(..., description="Held-out prompts for the before/after table.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    sft: SFTSettings
    dpo: DPOSettings
    evaluate: EvaluateSettings | None = Field(default_factory=EvaluateSettings,
                                              description="Evaluation after DPO against the SFT model; null skips it.")

    def stage_config(self, stage: str, model: ModelSpec | None = None, reference: ModelSpec | None = None):
        """The config of one stage; `model` is the upstream artifact to start from (default: base)."""
        common = {
            "model": model or self.model,
            "eval_prompts": self.eval_prompts,
            "generation": self.generation,
        }
        if stage == "baseline":
            return BaselineStageConfig(**common)
        if stage == "evaluate":
            if self.evaluate is None:
                raise ValueError("evaluate: this recipe has no evaluate section")
            return EvaluateStageConfig(**common, **dict(self.evaluate), reference=reference or self.model)
        settings = {"sft": self.sft, "dpo": self.dpo}[stage]
        cls = {"sft": SFTStageConfig, "dpo": DPOStageConfig}[stage]
        return cls(**common, **dict(settings))


class ConstitutionalAIRecipe(Strict):
    """The `constitutional-ai` flow (Bai et al. 2022): initial answers → SL-CAI critique → revision → SFT
    (mixed with helpful data) → two samples per prompt → RL-CAI feedback → DPO → evaluation."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The helpful model to start from.")
    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    redteam_prompts: DataSpec = Field(..., description="Training prompts to answer, critique and revise.")
    eval_prompts: DataSpec = Field(..., description="Held-out prompts for responses and evaluation.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec,
                                       description="Initial answers, critiques and revisions.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine for all generation.")
    critique: CritiqueReviseSettings = Field(default_factory=CritiqueReviseSettings)
    sft: SFTOptions = Field(default_factory=lambda: SFTOptions(
        mix_data=DataSpec(path="data/sft_train.jsonl"), mix_ratio=0.5))
    samples: GenerationSpec = Field(default_factory=lambda: GenerationSpec(temperature=0.8),
                                    description="Sampling of the two responses per prompt that feedback compares.")
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    rl_method: Literal["dpo", "ppo"] = Field(
        "dpo", description="RL-CAI: `dpo` on the AI preferences, or the paper's method, `ppo`: a preference "
        "model trained on the feedback's soft labels (step `preference_model`), then PPO against it.")
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    preference_model: RewardOptions = Field(default_factory=lambda: RewardOptions(heldout_fraction=0.1),
                                            description="rl_method ppo: the preference model (soft targets by default).")
    ppo: PPOOptions = Field(default_factory=PPOOptions, description="rl_method ppo: PPO on the red-team prompts.")
    evaluate: EvaluateSettings | None = Field(default_factory=EvaluateSettings)

    @model_validator(mode="after")
    def _samples_vary(self) -> "ConstitutionalAIRecipe":
        if self.samples.temperature == 0:
            raise ValueError("samples.temperature: 0 would make both responses of a pair identical; use > 0")
        return self


RL_ALGORITHMS = ("ppo", "grpo", "rloo")


RLHF_STEPS = ("baseline", "sft", "reward", "ppo", "grpo", "rloo", "evaluate")


class RLHFRecipe(Strict):
    """The `rlhf` flow: SFT → reward model → PPO (or GRPO / RLOO) → evaluation against the SFT model."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    eval_prompts: DataSpec = Field(..., description="Held-out prompts: before/after responses and rewards.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    sft: SFTSettings | None = Field(None, description="SFT first; null starts RL from `model` directly.")
    reward: RewardSettings = Field(..., description="The reward model, trained from the SFT model (or `model`).")
    prompts: DataSpec = Field(..., description="RL training prompts.")
    algorithm: Literal["ppo", "grpo", "rloo"] = Field("ppo", description="Policy optimisation: `ppo`, `grpo`, `rloo`.")
    ppo: PPOOptions = Field(default_factory=PPOOptions)
    grpo: GroupRLOptions = Field(default_factory=GroupRLOptions)
    rloo: GroupRLOptions = Field(default_factory=lambda: GroupRLOptions(beta=0.05))
    reward_mix: RewardMix = Field(default_factory=RewardMix, description="Terms added to the reward model's score.")
    evaluate: EvaluateSettings | None = Field(default_factory=EvaluateSettings,
                                              description="Evaluation of the RL policy against the SFT model "
                                              "(the reward model scores both); null skips it.")
