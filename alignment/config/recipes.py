"""Recipes: one model per flow (sft-to-dpo, constitutional-ai, rlhf, iterative-dpo). The flows build the stage configs
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
from alignment.config.rl import GroupRLOptions, PPOOptions, RewardMix, RLAlgorithm, RLOOOptions
from alignment.config.stages import (
    BenchmarkOptions,
    CritiqueReviseOptions,
    DPOOptions,
    DPOSection,
    FeedbackOptions,
    RewardOptions,
    RewardSection,
    SFTOptions,
    SFTSection,
)


class RoundOptions(Strict):
    """Iterative (online) DPO: each round samples from the current policy, labels the samples, builds pairs
    and trains DPO from the current policy; every round's held-out answers are scored against the start
    model's. (Xu et al. 2023 "Some things are more CRINGE than others"; Yuan et al. 2024 "Self-Rewarding
    Language Models"; Guo et al. 2024 "Direct Language Model Alignment from Online AI Feedback".)"""

    rounds: int = Field(3, ge=1, le=20, description="Rounds at most (early stopping may end sooner).")
    samples_per_prompt: int = Field(4, ge=2, le=16, description="Responses sampled per training prompt each round.")
    sampling: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(temperature=0.8, max_new_tokens=48),
        description="How the round's responses are sampled (round n uses seed + 100·(n−1), so rounds see new samples).")
    min_margin: float = Field(0.0, ge=0, description="Pairs scored by reward sources: keep a prompt's best-vs-"
                              "worst pair only when the scores differ by at least this (the constitution's "
                              "feedback uses `feedback.min_margin` instead).")
    reference: Literal["moving", "fixed"] = Field(
        "moving", description="DPO's reference: `moving`, the round's start (the previous round's policy; "
        "Self-Rewarding LMs); `fixed`, the first round's start model in every round (stays closer to it).")
    patience: int | None = Field(
        1, ge=1, description="Stop after this many rounds in a row without a held-out improvement; null runs "
        "every round.")
    min_improvement: float = Field(0.0, ge=0, description="How much the held-out score must rise over the best "
                                   "so far to count as an improvement.")

    @model_validator(mode="after")
    def _samples_vary(self) -> "RoundOptions":
        if self.sampling.temperature == 0:
            raise ValueError("iterate.sampling.temperature: 0 makes every sample of a prompt identical (no pairs); use > 0")
        return self


class GateCondition(Strict):
    """A condition on one step's metrics; a failed condition stops the flow right after that step, with a
    gate report naming each condition, its value and its threshold. E.g. DPO's held-out accuracy at least
    0.7: ``{step: dpo, metric: heldout_rewards_accuracies, op: ">=", value: 0.7}``; harmful compliance no
    worse than the reference by more than 5 points: ``{step: evaluate, metric:
    policy_harmful_compliance_keyword_rate, minus: reference_harmful_compliance_keyword_rate, op: "<=",
    value: 0.05}``."""

    step: str = Field(..., min_length=1, description="The step whose metrics are read, named as it shows in the "
                      "run (`dpo`, `evaluate`, `round-2-pairs`; an unknown name is refused with the list).")
    metric: str = Field(..., min_length=1, description="A metric of that step (its summary in the UI lists them).")
    minus: str | None = Field(None, min_length=1, description="Another metric of the same step subtracted "
                              "first (a difference to the reference).")
    op: Literal[">=", ">", "<=", "<"] = Field(..., description="How the value compares with `value`.")
    value: float = Field(..., description="The threshold.")


class PromoteOptions(Strict):
    """Releasing the flow's final model: an optional approval by a person, then the `promote` step, which
    records the release under ``$ALIGNMENT_HOME/releases/<name>/`` (and pushes to a hub repository when
    one is set and reachable). Runs only when every gate passed."""

    approval: bool = Field(True, description="Pause before promoting until a person approves or rejects the "
                           "model in the Prefect UI (the run's Resume button) or with `alignment approve RUN`.")
    timeout_s: int = Field(86_400, ge=10, description="How long the run waits for the decision; then it fails.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                             description="The release name (default: the flow's name).")
    hub_repo: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
                                 description="A hub repository (`owner/name`) to push the model to, when reachable.")
    token_env: str = Field("HF_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$",
                           description="Environment variable holding the hub token (never logged).")


class AllowRule(Strict):
    """A recipe key that deployment runs may change, within bounds. `key` is a dotted pattern: `*` stands
    for one part, `**` for any number (``dpo.beta``, ``**.train.learning_rate``). Every bound given must
    hold; a value the bounds do not speak to (a string for `min`) is refused."""

    key: str = Field(..., pattern=r"^(\*\*|\*|[A-Za-z_][A-Za-z0-9_]*)(\.(\*\*|\*|[A-Za-z_][A-Za-z0-9_]*))*$",
                     description="Dotted key pattern (`*`: one part, `**`: any number of parts).")
    min: float | None = Field(None, description="Smallest value allowed.")
    max: float | None = Field(None, description="Largest value allowed.")
    max_factor: float | None = Field(None, gt=0, description="At most this many times the served value (when "
                                     "that is positive): a ceiling on steps and epochs relative to the served run.")
    choices: list[str | int | float | bool] | None = Field(None, description="The only values allowed.")
    file: bool = Field(False, description="The value is a path: it must be an existing file inside the project "
                       "(data and evaluation sets). Only for recipes without gates or promotion.")


class ParameterPolicy(Strict):
    """What deployment runs may change (`alignment serve` and `alignment deploy` record it with the served
    recipe; the API cannot change it). Everything not allowed must equal the served value. Gates, promote,
    judges, engines, launch, trackers, `trust_remote_code` and this section are never allowed; with gates
    or promote, neither is anything a gate's numbers are measured on (data and evaluation files, `evaluate`,
    `generation`). The tuning keys (README: the allowlist, under Security) are allowed unless `tuning: false`."""

    tuning: bool = Field(True, description="Allow the default tuning keys (learning rates, beta, loss type, KL "
                         "coefficient, steps and epochs up to 4× the served values, seeds).")
    allow: list[AllowRule] = Field(default_factory=list, description="More keys deployment runs may change, "
                                   "e.g. {key: eval_prompts.path, file: true} or {key: dpo.beta, min: 0.05, max: 0.5}.")


class RecipeBase(Strict):
    """What every recipe has: the start model, the held-out prompts and how they are answered (the
    `respond` steps), and the evaluation that judges those answers. Each flow's recipe narrows `flow`
    to its own name (``flow: Literal["sft-to-dpo"] = "sft-to-dpo"``)."""

    flow: str = Field(..., description="The flow this recipe drives (`alignment validate` lists them); the "
                      "file's name decides nothing.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model the flow starts from.")
    eval_prompts: DataSpec = Field(..., description="Held-out prompts: answered after each stage (`respond`) "
                                   "for the before/after table and the evaluation. Changing them reruns only "
                                   "the answering and evaluation steps, never training.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="How answers are sampled.")
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="Engine for answers (`hf` by default: vLLM on CPU needs a fresh process).")
    evaluate: EvaluateOptions | None = Field(default_factory=EvaluateOptions,
                                             description="Evaluation of the final policy; null skips it.")
    benchmark: BenchmarkOptions | None = Field(
        default_factory=BenchmarkOptions, description="Capability benchmarks (lm-evaluation-harness) of the start "
        "model and every model a stage makes (`benchmark_<step>`), and the alignment tax (`tax`: each task's "
        "change from the start to the final model, paired, with intervals); null skips both.")
    launch: LaunchSpec | None = Field(None, description="Default launch of every training stage (a stage's own "
                                      "`launch` wins): e.g. {accelerate_config: alignment/launch_profiles/zero3.yaml, "
                                      "num_processes: 8}; unset: one process.")
    gates: list[GateCondition] = Field(default_factory=list, description="Conditions on steps' metrics; the "
                                       "first step whose condition fails stops the flow (with a gate report).")
    promote: PromoteOptions | None = Field(None, description="Approve (optionally) and record the final model as "
                                           "a release; null: no promotion.")
    parameters: ParameterPolicy = Field(default_factory=ParameterPolicy, description="What runs of this recipe's "
                                        "deployments may change through the API (the served recipe is the rest).")


class SftToDpoRecipe(RecipeBase):
    """The `sft-to-dpo` flow: base model → SFT → DPO → evaluate (DPO vs SFT), held-out answers after each."""

    flow: Literal["sft-to-dpo"] = Field("sft-to-dpo", description="The flow this recipe drives.")
    sft: SFTSection
    dpo: DPOSection


class ConstitutionalAIRecipe(RecipeBase):
    """The `constitutional-ai` flow (Bai et al. 2022): initial answers → SL-CAI critique → revision → SFT
    (mixed with helpful data) → two samples per prompt → RL-CAI feedback → DPO or PPO → evaluation.
    `model` is the helpful model to start from; `generation` and `engine` also serve the initial answers,
    critiques and revisions."""

    flow: Literal["constitutional-ai"] = Field("constitutional-ai", description="The flow this recipe drives.")
    constitution: ConstitutionSpec = Field(default_factory=ConstitutionSpec)
    redteam_prompts: DataSpec = Field(..., description="Training prompts to answer, critique and revise.")
    critique: CritiqueReviseOptions = Field(default_factory=CritiqueReviseOptions)
    sft: SFTOptions = Field(default_factory=lambda: SFTOptions(
        mix_data=DataSpec(path="data/sft_train.jsonl"), mix_ratio=0.5))
    samples: GenerationSpec = Field(default_factory=lambda: GenerationSpec(temperature=0.8),
                                    description="Sampling of the two responses per prompt that feedback compares.")
    feedback: FeedbackOptions = Field(default_factory=FeedbackOptions)
    rl_method: Literal["dpo", "ppo", "iterative-dpo"] = Field(
        "dpo", description="RL-CAI: `dpo` on the AI preferences, or the paper's method, `ppo`: a preference "
        "model trained on the feedback's soft labels (step `preference_model`), then PPO against it; or "
        "`iterative-dpo`: rounds of samples from the current policy → constitutional feedback → DPO "
        "(`iterate`), each scored on the held-out prompts against the SL-CAI model.")
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    preference_model: RewardOptions = Field(default_factory=lambda: RewardOptions(heldout_fraction=0.1),
                                            description="rl_method ppo: the preference model (soft targets by default).")
    ppo: PPOOptions = Field(default_factory=PPOOptions, description="rl_method ppo: PPO on the red-team prompts.")
    iterate: RoundOptions = Field(default_factory=lambda: RoundOptions(samples_per_prompt=2),
                                  description="rl_method iterative-dpo: the rounds (samples are paired 0 vs 1, "
                                  "2 vs 3, … for feedback).")

    @model_validator(mode="after")
    def _samples_vary(self) -> "ConstitutionalAIRecipe":
        if self.samples.temperature == 0:
            raise ValueError("samples.temperature: 0 would make both responses of a pair identical; use > 0")
        if self.rl_method == "iterative-dpo" and self.iterate.samples_per_prompt % 2:
            raise ValueError(f"iterate.samples_per_prompt: {self.iterate.samples_per_prompt} is odd; feedback "
                             "compares samples in pairs (0 vs 1, 2 vs 3, ...): use an even number")
        return self


class RLHFRecipe(RecipeBase):
    """The `rlhf` flow: SFT → reward model → PPO (or GRPO / RLOO) → evaluation against the SFT model, whose
    held-out answers the reward model scores."""

    flow: Literal["rlhf"] = Field("rlhf", description="The flow this recipe drives.")
    sft: SFTSection | None = Field(None, description="SFT first; null starts RL from `model` directly.")
    reward: RewardSection = Field(..., description="The reward model, trained from the SFT model (or `model`).")
    prompts: DataSpec = Field(..., description="RL training prompts.")
    algorithm: RLAlgorithm = Field(RLAlgorithm.ppo, description="Policy optimisation: `ppo`, `grpo`, `rloo`.")
    ppo: PPOOptions = Field(default_factory=PPOOptions)
    grpo: GroupRLOptions = Field(default_factory=GroupRLOptions)
    rloo: RLOOOptions = Field(default_factory=RLOOOptions)
    reward_mix: RewardMix = Field(default_factory=RewardMix, description="Terms added to the reward model's score.")


class IterativeDPORecipe(RecipeBase):
    """The `iterative-dpo` flow: (SFT →) reward model → rounds of [sample k responses per prompt from the
    current policy → score them → best-vs-worst pairs → DPO from the current policy → held-out answers
    scored against the start model's], stopping early when the held-out score stops improving."""

    flow: Literal["iterative-dpo"] = Field("iterative-dpo", description="The flow this recipe drives.")
    sft: SFTSection | None = Field(None, description="SFT first; null starts the rounds from `model`.")
    reward: RewardSection | None = Field(None, description="Train the reward model that labels the samples "
                                         "(step `reward`, from the SFT model or `model`).")
    reward_model: ModelSpec | None = Field(None, description="Or an existing reward model (a sequence "
                                           "classifier with one output), e.g. a reward artifact's directory.")
    reward_mix: RewardMix = Field(default_factory=RewardMix, description="Terms added to the reward model's "
                                  "score (a rule, a judge); alone, they are the whole label.")
    prompts: DataSpec = Field(..., description="Training prompts, sampled every round.")
    iterate: RoundOptions = Field(default_factory=RoundOptions)
    dpo: DPOOptions = Field(default_factory=DPOOptions, description="The DPO of every round.")

    @model_validator(mode="after")
    def _labels(self) -> "IterativeDPORecipe":
        if self.reward is not None and self.reward_model is not None:
            raise ValueError("reward and reward_model: set one (train a reward model, or use an existing one)")
        if self.reward is None and self.reward_model is None and self.reward_mix.rule is None and self.reward_mix.judge is None:
            raise ValueError("nothing labels the samples: set reward (train a reward model), reward_model, "
                             "reward_mix.rule or reward_mix.judge")
        if self.evaluate is None:
            raise ValueError("evaluate: null leaves nothing to compare rounds by; iterative-dpo scores every "
                             "round's held-out answers (keep an evaluate section, e.g. `evaluate: {judge: null}`)")
        return self
