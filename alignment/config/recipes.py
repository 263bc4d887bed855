"""Recipes: one model per flow (sft-to-dpo, constitutional-ai, rlhf). The flows build the stage configs
from them (``flows/*.py``); a recipe is what a user edits and what a deployment's parameters carry."""

from typing import Literal

from pydantic import Field, model_validator

from alignment.config.base import (
    ConstitutionSpec,
    DataSpec,
    EngineKind,
    EngineSpec,
    EvaluateOptions,
    GenerationSpec,
    LaunchSpec,
    ModelSpec,
    Strict,
)
from alignment.config.rl import GroupRLOptions, PPOOptions, RewardMix, RLAlgorithm
from alignment.config.stages import (
    CritiqueReviseOptions,
    DPOOptions,
    DPOSection,
    FeedbackOptions,
    RewardOptions,
    RewardSection,
    SFTOptions,
    SFTSection,
)


class RecipeBase(Strict):
    """What every recipe has: the start model, the held-out prompts and how they are answered (the
    `respond` steps), and the evaluation that judges those answers."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model the flow starts from.")
    eval_prompts: DataSpec = Field(..., description="Held-out prompts: answered after each stage (`respond`) "
                                   "for the before/after table and the evaluation. Changing them reruns only "
                                   "the answering and evaluation steps, never training.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="How answers are sampled.")
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="Engine for answers (`hf` by default: vLLM on CPU needs a fresh process).")
    evaluate: EvaluateOptions | None = Field(default_factory=EvaluateOptions,
                                             description="Evaluation of the final policy; null skips it.")
    launch: LaunchSpec | None = Field(None, description="Default launch of every training stage (a stage's own "
                                      "`launch` wins): e.g. {accelerate_config: flows/infra/zero3.yaml, "
                                      "num_processes: 8}; unset: one process.")


class SftToDpoRecipe(RecipeBase):
    """The `sft-to-dpo` flow: base model → SFT → DPO → evaluate (DPO vs SFT), held-out answers after each."""

    sft: SFTSection
    dpo: DPOSection


class ConstitutionalAIRecipe(RecipeBase):
    """The `constitutional-ai` flow (Bai et al. 2022): initial answers → SL-CAI critique → revision → SFT
    (mixed with helpful data) → two samples per prompt → RL-CAI feedback → DPO or PPO → evaluation.
    `model` is the helpful model to start from; `generation` and `engine` also serve the initial answers,
    critiques and revisions."""

    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    redteam_prompts: DataSpec = Field(..., description="Training prompts to answer, critique and revise.")
    critique: CritiqueReviseOptions = Field(default_factory=CritiqueReviseOptions)
    sft: SFTOptions = Field(default_factory=lambda: SFTOptions(
        mix_data=DataSpec(path="data/sft_train.jsonl"), mix_ratio=0.5))
    samples: GenerationSpec = Field(default_factory=lambda: GenerationSpec(temperature=0.8),
                                    description="Sampling of the two responses per prompt that feedback compares.")
    feedback: FeedbackOptions = Field(default_factory=FeedbackOptions)
    rl_method: Literal["dpo", "ppo"] = Field(
        "dpo", description="RL-CAI: `dpo` on the AI preferences, or the paper's method, `ppo`: a preference "
        "model trained on the feedback's soft labels (step `preference_model`), then PPO against it.")
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    preference_model: RewardOptions = Field(default_factory=lambda: RewardOptions(heldout_fraction=0.1),
                                            description="rl_method ppo: the preference model (soft targets by default).")
    ppo: PPOOptions = Field(default_factory=PPOOptions, description="rl_method ppo: PPO on the red-team prompts.")

    @model_validator(mode="after")
    def _samples_vary(self) -> "ConstitutionalAIRecipe":
        if self.samples.temperature == 0:
            raise ValueError("samples.temperature: 0 would make both responses of a pair identical; use > 0")
        return self


class RLHFRecipe(RecipeBase):
    """The `rlhf` flow: SFT → reward model → PPO (or GRPO / RLOO) → evaluation against the SFT model, whose
    held-out answers the reward model scores."""

    sft: SFTSection | None = Field(None, description="SFT first; null starts RL from `model` directly.")
    reward: RewardSection = Field(..., description="The reward model, trained from the SFT model (or `model`).")
    prompts: DataSpec = Field(..., description="RL training prompts.")
    algorithm: RLAlgorithm = Field(RLAlgorithm.ppo, description="Policy optimisation: `ppo`, `grpo`, `rloo`.")
    ppo: PPOOptions = Field(default_factory=PPOOptions)
    grpo: GroupRLOptions = Field(default_factory=GroupRLOptions)
    rloo: GroupRLOptions = Field(default_factory=lambda: GroupRLOptions(beta=0.05))
    reward_mix: RewardMix = Field(default_factory=RewardMix, description="Terms added to the reward model's score.")
