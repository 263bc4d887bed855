"""Stage configs of the supervised, preference, answering, evaluation and Constitutional AI stages.

Naming: ``XOptions`` are the knobs of stage X whatever data it is given, each defined once (a recipe
section where the flow supplies the data, e.g. constitutional-ai's `sft`); ``XSection`` is a recipe
section that also names the data (``XOptions`` + data, e.g. sft-to-dpo's `sft`: the recipe stays flat);
``XStageConfig`` is exactly what ``alignment.stages.x.run`` reads, by composition: the start model, the
data and upstream artifacts, and one ``options: XOptions``. The flows build stage configs with their
typed builder (``Configs`` in each flow module, ``XOptions.of(section, recipe.launch)``); a config can
also be written by hand for ``alignment stage X --config`` (knobs under ``options:``).
"""

import re
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignment.config.base import (
    ArtifactRef,
    ConstitutionSpec,
    DataSpec,
    EngineKind,
    EngineSpec,
    GenerationSpec,
    JudgeSpec,
    ModelSpec,
    Options,
    PairwiseJudgeSpec,
    StageConfig,
    TrainingOptions,
    TrainSpec,
)


class SFTOptions(TrainingOptions):
    """How SFT trains (TRL `SFTTrainer`), whatever data it is given."""

    assistant_only_loss: bool = Field(True, description="Train only on completion/assistant tokens.")
    mix_data: DataSpec | None = Field(None, description="Extra SFT data mixed in (e.g. helpful data next to "
                                      "Constitutional AI revisions, so helpfulness is kept).")
    mix_ratio: float = Field(0.5, ge=0, lt=1, description="Share of training rows drawn from mix_data.")


class SFTSection(SFTOptions):
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


class DPOOptions(TrainingOptions):
    """How DPO trains (TRL `DPOTrainer`), whatever pairs it is given."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5))
    beta: float = Field(0.1, gt=0, description="KL strength of DPO (higher stays closer to the reference).")
    loss_type: DPOLoss = Field(DPOLoss.sigmoid, description="DPO loss variant (TRL `loss_type`).")
    precompute_ref_log_probs: bool = Field(
        False, description="Compute the reference's log-probs once before training (TRL): no reference forward "
        "in the loop, a longer start; worth it for long runs on GPUs.")


class DPOSection(DPOOptions):
    """The DPO part of a recipe."""

    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs for preference accuracy.")


class SFTStageConfig(StageConfig):
    """Everything `alignment.stages.sft.run` reads."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model to fine-tune.")
    data: DataSpec = Field(..., description="Instruction data: `messages` or `prompt`/`completion` rows.")
    options: SFTOptions = Field(default_factory=SFTOptions)


class DPOStageConfig(StageConfig):
    """Everything `alignment.stages.dpo.run` reads. `model` is the policy start (and the reference, unless
    `reference` names another model)."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The policy start and the reference.")
    reference: ModelSpec | None = Field(
        None, description="The reference of the DPO loss when it is not the start model: iterative DPO with a "
        "fixed reference starts round n from round n−1's policy but keeps the first round's start as reference.")
    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs for preference accuracy.")
    options: DPOOptions = Field(default_factory=DPOOptions)


SET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RespondStageConfig(StageConfig):
    """Answers of one model to named prompt sets (held-out, red-team, benign): the before/after columns of
    the UI and what `evaluate` judges."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model that answers.")
    sets: dict[str, DataSpec] = Field(..., min_length=1, description="Prompt sets by name, e.g. "
                                      "{heldout: ..., redteam: ..., benign: ...}; `heldout` is the table's.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf))

    @field_validator("sets")
    @classmethod
    def _names(cls, sets: dict[str, DataSpec]) -> dict[str, DataSpec]:
        bad = [n for n in sets if not SET_NAME.match(n)]
        if bad:
            raise ValueError(f"set names {bad} must be lowercase letters, digits and '_' (e.g. heldout)")
        return sets


class CalibrateStageConfig(StageConfig):
    """The judge's own accuracy on pairs with a known better answer (evaluate reports it with every judged
    number and, by default, skips judging when it is at chance)."""

    judge: PairwiseJudgeSpec = Field(default_factory=PairwiseJudgeSpec)
    data: DataSpec = Field(..., description="Preference pairs whose `chosen` answer is the better one.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the 95% interval.")


class EvaluateStageConfig(StageConfig):
    """Everything `alignment.stages.evaluate.run` reads: two `respond` artifacts (policy and reference, the
    same prompt sets), the judge and its `calibrate` artifact, and optionally a reward model and KL."""

    policy: ArtifactRef = Field(..., description="The policy's `respond` artifact.")
    reference: ArtifactRef = Field(..., description="The reference's `respond` artifact (e.g. the SFT model's).")
    judge: PairwiseJudgeSpec | None = Field(default_factory=PairwiseJudgeSpec, description="null: no judged numbers.")
    calibration: ArtifactRef | None = Field(None, description="The judge's `calibrate` artifact.")
    at_chance: Literal["skip", "compute"] = Field("skip", description="Judge at chance: skip or compute anyway.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the 95% intervals.")
    reward_model: ModelSpec | None = Field(None, description="Scores policy and reference held-out answers.")
    kl: GenerationSpec | None = Field(None, description="Sampling for the KL(policy ‖ reference) estimate.")


class GenerateStageConfig(StageConfig):
    """Responses of `model` to `prompts` (e.g. initial answers to red-team prompts for SL-CAI)."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    prompts: DataSpec = Field(..., description="Prompts to answer (any format with a prompt).")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    num_samples: int = Field(1, ge=1, le=16, description="Responses per prompt (seeds seed, seed+1, ...).")

    @model_validator(mode="after")
    def _sampling(self) -> "GenerateStageConfig":
        if self.num_samples > 1 and self.generation.temperature == 0:
            raise ValueError(f"num_samples = {self.num_samples} needs generation.temperature > 0; greedy "
                             "decoding would give the same response every time")
        return self


class CritiqueReviseOptions(Options):
    """SL-CAI: rounds of critique → revision, one principle sampled per prompt and round (seeded)."""

    rounds: int = Field(2, ge=1, le=8, description="Critique → revision rounds per prompt.")
    few_shot: int = Field(1, ge=0, le=8, description="Worked examples from the constitution shown first.")
    seed: int = Field(0, description="Seed for principle and example sampling.")
    engine: EngineSpec = Field(default_factory=EngineSpec)


class CritiqueReviseStageConfig(StageConfig):
    """Everything `alignment.stages.critique_revise.run` reads; `model` writes critiques and revisions."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    initial: DataSpec = Field(..., description="Initial responses: prompt/completion rows (the generate stage).")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Critique and revision sampling.")
    options: CritiqueReviseOptions = Field(default_factory=CritiqueReviseOptions)


class FeedbackOptions(Options):
    """RL-CAI: a feedback model labels response pairs by multiple choice over sampled principles."""

    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    principles_per_pair: int = Field(4, ge=1, le=32, description="Principles sampled and ensembled per pair.")
    chain_of_thought: bool = Field(False, description="Judge reasons first; labels then clamped to [0.4, 0.6].")
    few_shot: int = Field(1, ge=0, le=8, description="Worked comparisons from the constitution's "
                          "`feedback_examples` shown first (as in the paper), at most as many as it has.")
    min_margin: float = Field(0.0, ge=0, lt=0.5, description="Drop pairs whose ensembled label is within this of 0.5.")
    seed: int = Field(0, description="Seed for principle and example sampling.")


class FeedbackStageConfig(StageConfig):
    """Everything `alignment.stages.feedback.run` reads; `samples` has two or more responses per prompt."""

    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    samples: DataSpec = Field(..., description="prompt/completion rows, several per prompt (generate, num_samples>1).")
    options: FeedbackOptions = Field(default_factory=FeedbackOptions)


class RewardOptions(TrainingOptions):
    """How the reward model trains (TRL `RewardTrainer`, Bradley–Terry), whatever pairs it is given."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=1e-4))
    targets: Literal["auto", "hard", "soft"] = Field(
        "auto", description="`hard`: chosen beats rejected (Bradley–Terry). `soft`: each row's `soft_label` "
        "(P(chosen is better), e.g. from the constitutional-ai feedback stage) is the target of a "
        "cross-entropy loss. `auto`: soft when the rows carry `soft_label`.")
    center_rewards: float | None = Field(
        0.01, ge=0, description="Penalty on the squared mean reward (TRL `center_rewards_coefficient`), so "
        "rewards stay near 0 and PPO's KL penalty keeps its meaning; null turns it off.")
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Without eval_data: share of `data` held out (seeded) for accuracy.")


class RewardSection(RewardOptions):
    """The reward part of a recipe."""

    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` (optionally "
                           "`soft_label`) or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs; unset holds out `heldout_fraction` of data.")


class RewardStageConfig(StageConfig):
    """Everything `alignment.stages.reward.run` reads; `model` is the base the reward model starts from."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(..., description="Preference pairs: `prompt`/`chosen`/`rejected` (optionally "
                           "`soft_label`) or HH-RLHF text.")
    eval_data: DataSpec | None = Field(None, description="Held-out pairs; unset holds out `heldout_fraction` of data.")
    options: RewardOptions = Field(default_factory=RewardOptions)


TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class BenchmarkOptions(Options):
    """Capability benchmarks run by lm-evaluation-harness on a model (the `benchmark` stage): the project's
    local task files (exact answers; no network) and, where a hub is reachable, any lm-eval task by name."""

    tasks: dict[str, DataSpec] = Field(
        default_factory=lambda: {name: DataSpec(path=f"data/benchmark/{name}.jsonl")
                                 for name in ("facts", "recall", "arithmetic", "instructions")},
        description="Local tasks by name: JSONL rows {question, choices, answer: index} (multiple choice, by "
        "log-likelihood), {question, answer: text} (greedy answer compared exactly) or {question, answers: "
        "[accepted], wrong: [rejected]} (a free answer that must state the fact); see data/benchmark/.")
    harness_tasks: list[str] = Field(
        default_factory=list, description="lm-eval task names (e.g. [arc_easy, gsm8k]); their data comes from "
        "the Hugging Face hub, so they need network or a populated HF_DATASETS_CACHE.")
    limit: int | None = Field(None, ge=1, description="Only the first N items of each task (quick checks).")
    batch_size: int = Field(32, ge=1, le=512, description="lm-eval batch size.")
    max_new_tokens: int = Field(12, ge=1, le=512, description="Exact-answer tasks: tokens generated (greedy; the answer is read from the first line).")
    open_max_new_tokens: int = Field(24, ge=1, le=512, description="Open-answer tasks (rows with `answers`): tokens "
                                     "generated for the free answer the right fact must appear in.")
    chat_template: bool = Field(True, description="Ask through the model's chat template (instruct models).")
    num_fewshot: int = Field(0, ge=0, le=32, description="Few-shot examples per item (from the same task).")

    @field_validator("tasks")
    @classmethod
    def _names(cls, tasks: dict[str, DataSpec]) -> dict[str, DataSpec]:
        bad = [n for n in tasks if not TASK_NAME.match(n)]
        if bad:
            raise ValueError(f"task names {bad} must be lowercase letters, digits and '_' (e.g. facts)")
        return tasks

    @model_validator(mode="after")
    def _some(self) -> "BenchmarkOptions":
        if not self.tasks and not self.harness_tasks:
            raise ValueError("benchmark: no tasks; give `tasks` (local files) or `harness_tasks` (lm-eval names), "
                             "or set `benchmark: null` to skip benchmarking")
        clash = sorted(set(self.tasks) & set(self.harness_tasks))
        if clash:
            raise ValueError(f"benchmark: {clash} named both as a local task and an lm-eval task; rename the local one")
        return self


class BenchmarkStageConfig(StageConfig):
    """Everything `alignment.stages.benchmark.run` reads: the model and what to run on it."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model benchmarked (a stage artifact or any model).")
    options: BenchmarkOptions = Field(default_factory=BenchmarkOptions)


class TaxStageConfig(StageConfig):
    """The alignment tax: per task, what a chain of models (start → ... → aligned) gained or lost on the
    same benchmark items, as paired differences with intervals (`alignment.stages.tax.run`)."""

    models: dict[str, ArtifactRef] = Field(..., min_length=2, description="`benchmark` artifacts by label, in "
                                           "pipeline order (e.g. base, sft, dpo); the first is the start.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the 95% intervals.")

