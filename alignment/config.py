"""Typed configuration: one pydantic model per concern, shared by stages, recipes and Prefect flows.

Every model forbids unknown keys (a typo in a recipe is an error, never silently ignored) and documents
each field once through ``Field(description=...)``; the same models are the Prefect flow parameters, so
the server validates ``--param`` overrides against the same rules.
"""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    """Which model a stage starts from."""

    name: str = Field(
        "smollm2-135m-instruct",
        min_length=1,
        description="A built-in model name (`smollm2-135m-instruct`, `tiny-random`), a Hugging Face hub id, "
        "a local model directory, or a stage artifact directory from the store.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: `auto` is float32 on CPU and bfloat16 on a GPU that supports it."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with a hub repository. Off unless you trust the repository."
    )


class AdapterMode(StrEnum):
    auto = "auto"  # LoRA on CPU, full fine-tuning on a GPU
    lora = "lora"
    qlora = "qlora"  # 4-bit base via bitsandbytes; needs a CUDA GPU
    full = "full"


class AdapterSpec(Strict):
    """Parameter-efficient fine-tuning settings (PEFT)."""

    mode: AdapterMode = Field(AdapterMode.auto, description="`auto` (LoRA on CPU, full on GPU), `lora`, `qlora`, `full`.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear`."
    )


class DataFormat(StrEnum):
    auto = "auto"
    messages = "messages"  # {"messages": [{"role", "content"}, ...]}
    prompt_completion = "prompt_completion"  # {"prompt", "completion"}, text or conversational
    preference = "preference"  # {"prompt"?, "chosen", "rejected"}, explicit or implicit prompt
    hh_rlhf = "hh_rlhf"  # {"chosen", "rejected"} in "\n\nHuman: ... \n\nAssistant: ..." text
    prompt_only = "prompt_only"  # {"prompt"}, for evaluation / generation


class DataSpec(Strict):
    """A data set: a local file (JSONL, JSON, Parquet, CSV) or a Hugging Face hub data set."""

    path: str = Field(..., min_length=1, description="Local file path (relative to the project root) or hub id.")
    split: str = Field("train", description="Split name for hub data sets (ignored for local files).")
    subset: str | None = Field(None, description="Hub data set configuration name.")
    format: DataFormat = Field(DataFormat.auto, description="Row format; `auto` detects it from the keys.")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N rows (after validation).")


class TrainSpec(Strict):
    """Optimisation settings common to the TRL trainers."""

    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate; must be > 0.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored if max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps; -1 uses `epochs`.")
    batch_size: int = Field(8, ge=1, description="Per-device batch size (rows; pairs for DPO).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(256, ge=8, description="Truncate tokenised rows to this many tokens.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps for linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule."
    )
    logging_steps: int = Field(2, ge=1, description="Record metrics every N steps (training curves).")
    seed: int = Field(0, description="Seed for data order, adapter init and sampling.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on large models.")


class GenerationSpec(Strict):
    """How held-out responses are sampled for the before/after tables."""

    max_new_tokens: int = Field(64, ge=1, le=4096, description="Tokens generated per response.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding (reproducible).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling cut-off when temperature > 0.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    seed: int = Field(0, description="Sampling seed.")


class EngineKind(StrEnum):
    auto = "auto"  # vllm when importable, else hf
    hf = "hf"
    vllm = "vllm"
    openai = "openai"  # an OpenAI-compatible endpoint, or a managed `vllm serve` on 127.0.0.1


class EngineSpec(Strict):
    """Which generation engine produces responses and judge outputs."""

    kind: EngineKind = Field(EngineKind.auto, description="`auto` (vLLM when importable, else `hf`), `hf`, `vllm`, `openai`.")
    base_url: str | None = Field(
        None, description="`openai` only: an existing endpoint (e.g. http://127.0.0.1:8000/v1); unset starts a "
        "managed `vllm serve` on 127.0.0.1 for the run and stops it afterwards.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable holding the "
                             "endpoint's key (the key itself never goes into a config, log or artifact).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=0.95, description="vLLM: share of device memory it reserves. Unset: 0.5 on a GPU; on "
        "a CPU (where it is a share of system memory) 8 GiB worth, so it starts beside other work.")
    max_model_len: int = Field(2048, ge=64, description="vLLM: longest prompt + completion in tokens.")
    enforce_eager: bool | None = Field(
        None, description="vLLM: skip graph compilation (None: eager on CPU, where it starts ~4× faster).")
    static_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="hf: static KV cache (compiled); `auto` uses it on a GPU for batches of 32 or more.")
    server_timeout_s: float = Field(300.0, gt=0, description="Managed server: seconds to wait for its health check.")


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


class StageInput(Strict):
    """What every stage config shares: the start model, held-out prompts and a refresh salt."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    eval_prompts: DataSpec | None = Field(None, description="Held-out prompts answered after training.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    refresh_token: str | None = Field(
        None, description="Set to force a new artifact although nothing else changed (refresh)."
    )


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


class JudgeSpec(Strict):
    """The LLM judge: any model the engines load, with its own accuracy measured on a calibration set."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The judge model (default: the built-in).")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine that runs the judge.")
    criterion: str = Field("helpful, honest and harmless: correct, clear, polite and safe", min_length=3,
                           description="What 'better' means in pairwise comparisons.")
    tie_margin: float = Field(0.05, ge=0, lt=0.5, description="|P(A better) - 0.5| below this is a tie.")
    calibration: DataSpec | None = Field(
        default_factory=lambda: DataSpec(path="data/judge_calibration.jsonl"),
        description="Pairs with a known better answer; the judge's accuracy on them is reported with every "
        "judged number, and judged numbers are flagged when it is not clearly above chance.")


class EvaluateSettings(Strict):
    """The evaluate part of a recipe: judged win rate, harmlessness, over-refusal, length drift."""

    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine for policy/reference responses.")
    redteam_prompts: DataSpec | None = Field(default_factory=lambda: DataSpec(path="data/redteam_prompts.jsonl"),
                                             description="Harmful requests: the share answered is harmful compliance.")
    benign_prompts: DataSpec | None = Field(default_factory=lambda: DataSpec(path="data/benign_prompts.jsonl"),
                                            description="Benign requests with alarming words: refusals are over-refusal.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the 95% intervals.")
    reward_model: ModelSpec | None = Field(
        None, description="A reward model (sequence classifier with one output, e.g. the reward stage's "
        "artifact) that scores policy and reference responses on the held-out prompts.")


class EvaluateStageConfig(StageInput, EvaluateSettings):
    """Everything `alignment.stages.evaluate.run` needs. `model` is the policy, `reference` its baseline."""

    reference: ModelSpec = Field(..., description="The model the policy is compared with (e.g. the SFT model).")


class ConstitutionSpec(Strict):
    """A constitution file; its content hash (not its path) goes into artifact keys."""

    path: str = Field("constitutions/harmlessness.yaml", min_length=1, description="Constitution YAML file.")


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


class RuleReward(Strict):
    """A programmatic reward: does the response contain a word (case-insensitive)?"""

    contains: str = Field(..., min_length=1, description="The word or phrase rewarded.")
    mode: Literal["binary", "count"] = Field("binary", description="`binary`: 1 if present; `count`: occurrences (≤ 5).")
    weight: float = Field(1.0, description="Multiplier of this term in the total reward.")


class RewardMix(Strict):
    """Reward terms next to the reward model: a rule and an LLM judge, each weighted."""

    model_weight: float = Field(1.0, description="Multiplier of the reward model's score.")
    rule: RuleReward | None = Field(None, description="A rule-based term (e.g. reward a target word).")
    judge: JudgeSpec | None = Field(None, description="An LLM judge: P(it answers 'Yes' to judge_question).")
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


class PPOOptions(Strict):
    """Our PPO (TRL 1.16 has none): policy with a value head, per-token KL penalty to the reference, GAE."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5, batch_size=8),
                             description="learning_rate, batch_size (the minibatch), grad_accum, max_length, "
                             "weight_decay, warmup_ratio, lr_scheduler and seed apply; epochs/max_steps do not "
                             "(see iterations).")
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    iterations: int = Field(20, ge=1, description="Rollout → update iterations.")
    rollout_batch: int = Field(16, ge=1, description="Prompts (one response each) per iteration.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    rollout: GenerationSpec = Field(default_factory=_rollout_default, description="Rollout sampling.")
    kl_coef: float = Field(0.05, ge=0, description="Initial coefficient of the per-token KL penalty.")
    kl_target: float | None = Field(None, gt=0, description="Adaptive KL: target KL per response (nats); null = fixed.")
    kl_horizon: int = Field(10_000, ge=1, description="Adaptive KL controller horizon (Ziegler et al.).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the penalty.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(0.2, gt=0, description="Policy ratio clip.")
    cliprange_value: float = Field(0.2, gt=0, description="Value clip around the rollout values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards before GAE.")
    missing_eos_penalty: float | None = Field(
        1.0, ge=0, description="Subtracted from the score of responses cut at rollout.max_new_tokens without EOS.")
    sample_every: int = Field(5, ge=1, description="Record a table of sample rollouts every N iterations.")
    checkpoint_every: int = Field(5, ge=1, description="Save a resumable checkpoint every N iterations.")
    engine: EngineSpec = Field(default_factory=lambda: EngineSpec(kind=EngineKind.hf),
                               description="Rollout engine: `hf` generates with the live policy; `vllm` "
                               "loads the policy's new weights every iteration.")


class GroupRLOptions(Strict):
    """TRL `GRPOTrainer` / `RLOOTrainer`: several sampled responses per prompt, advantages within the group."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(learning_rate=5e-5, batch_size=8, max_steps=20))
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
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


class RLStageInput(StageInput):
    """What every RL stage reads: training prompts and the reward."""

    prompts: DataSpec = Field(..., description="Training prompts (any format with a prompt).")
    reward: RewardSources = Field(..., description="Reward model, rule and/or judge.")


class PPOStageConfig(RLStageInput, PPOOptions):
    """Everything `alignment.stages.ppo.run` needs; `model` is the policy start and the reference."""


class GRPOStageConfig(RLStageInput, GroupRLOptions):
    """Everything `alignment.stages.grpo.run` needs."""


class RLOOStageConfig(RLStageInput, GroupRLOptions):
    """Everything `alignment.stages.rloo.run` needs."""


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
