"""Building blocks every config shares: models, adapters, data, training, generation, engines, judges."""

from enum import StrEnum
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    liger_kernel: bool = Field(False, description="Liger's fused kernels (RMSNorm, RoPE, SwiGLU) in the TRL "
                               "trainers: faster on GPUs; needs the liger-kernel package.")
    checkpoint_every: int = Field(
        25, ge=1, description="Save a resumable checkpoint every N optimizer steps (PPO: iterations) under "
        "$ALIGNMENT_HOME/checkpoints/<stage>/<key>/; the same config run again resumes from the newest one that "
        "loads. The last `keep_checkpoints` are kept; all go once the artifact is committed.")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Checkpoints kept (older ones are pruned).")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers to log to (none by default); the run is named "
        "after the Prefect flow run. Each needs its package and its usual settings (e.g. WANDB_MODE, "
        "MLFLOW_TRACKING_URI) in the environment.")


class LaunchSpec(Strict):
    """How a training stage runs: in one process (the default) or under `accelerate launch`."""

    accelerate_config: str | None = Field(
        None, description="A plain accelerate config file: one of alignment/launch_profiles/ (ddp, zero2, zero3, "
        "zero3-offload, fsdp, two-node) or your own. Unset with num_processes > 1: alignment/launch_profiles/ddp.yaml.")
    num_processes: int | None = Field(None, ge=1, le=4096, description="Processes in all, over every machine "
                                      "(overrides the file's num_processes); more than 1 launches the stage.")


class Options(Strict):
    """The knobs of one stage, whatever data it is given: what a stage config holds as `options` (by
    composition: the config holds its model, its data and one options object), and what a recipe section
    is made of (a section is its stage's options, plus its data where the recipe names the data)."""

    @classmethod
    def of(cls, section: Strict, launch: LaunchSpec | None = None) -> Self:
        """The options part of a recipe `section` (its options class or a subclass that adds data); an
        unset `launch` takes `launch` (the recipe's)."""
        fields = {name: getattr(section, name) for name in cls.model_fields}
        if "launch" in fields and fields["launch"] is None:
            fields["launch"] = launch
        return cls(**fields)


class TrainingOptions(Options):
    """What every training stage has: how it optimises, its adapter, and how it launches."""

    train: TrainSpec = Field(default_factory=TrainSpec)
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    launch: LaunchSpec | None = Field(None, description="Processes and accelerate config; unset: the recipe's "
                                      "`launch`, else one process.")


class GenerationSpec(Strict):
    """How responses are sampled (held-out answers, initial answers, rollouts)."""

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


def recorded_url(url: str | None) -> str | None:
    """A URL as messages show it: scheme, host, port and path; never a user, password, query or fragment
    (where keys end up when pasted from a provider's console). A URL too broken to split shows as `<url>`."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class EngineSpec(Strict):
    """Which generation engine produces responses and judge outputs."""

    kind: EngineKind = Field(EngineKind.auto, description="`auto` (vLLM when importable, else `hf`), `hf`, `vllm`, `openai`.")
    base_url: str | None = Field(
        None, description="`openai` only: an existing endpoint (e.g. http://127.0.0.1:8000/v1); unset starts a "
        "managed `vllm serve` on 127.0.0.1 for the run and stops it afterwards.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable holding the "
                             "endpoint's key (the key itself never goes into a config, log or artifact).")

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{recorded_url(url)!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{recorded_url(url)!r} carries a user, password, query or fragment, which would be "
                             "recorded in configs, logs and the Prefect UI (and the engine appends its paths to the "
                             "URL); put the key in the environment variable named by engine.api_key_env instead")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError as e:
            raise ValueError(f"{recorded_url(url.split('@')[-1].split('?')[0])!r}: {e}") from None
        return url

    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=0.95, description="vLLM: share of device memory it reserves. Unset: 0.5 on a GPU; on "
        "a CPU (where it is a share of system memory) 8 GiB worth, so it starts beside other work.")
    max_model_len: int = Field(2048, ge=64, description="vLLM: longest prompt + completion in tokens.")
    enforce_eager: bool | None = Field(
        None, description="vLLM: skip graph compilation (None: eager on CPU, where it starts ~4× faster).")
    static_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="hf: static KV cache (compiled); `auto` uses it on a GPU for batches of 32 or more.")
    server_timeout_s: float = Field(300.0, gt=0, description="Managed server: seconds to wait for its health check.")


class StageConfig(Strict):
    """The base of every stage config. Every other field of a stage config is something the stage reads;
    each is hashed into its artifact key unless the stage's ``SPEC.unhashed`` names it (with the reason)."""

    refresh_token: str | None = Field(
        None, description="Set to force a new artifact although nothing else changed (refresh)."
    )

    def with_options(self, **changes) -> Self:
        """This config with some of its `options` changed, validated (unlike `model_copy(update=...)`, which
        would take an unknown or mistyped knob silently): `cfg.with_options(launch=LaunchSpec(...))`."""
        options = getattr(self, "options", None)
        if not isinstance(options, Options):
            raise TypeError(f"{type(self).__name__} has no options to change")
        return self.model_copy(update={"options": type(options).model_validate({**dict(options), **changes})})


class ArtifactRef(Strict):
    """An artifact in the store, e.g. a `respond` step's answers that `evaluate` judges. Keys hash its
    artifact id (from its manifest), never its path."""

    path: str = Field(..., min_length=1, description="The artifact directory (what a stage result's `path` is).")


class JudgeSpec(Strict):
    """An LLM judge: any model the engines load."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The judge model (default: the built-in).")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine that runs the judge.")


class PairwiseJudgeSpec(JudgeSpec):
    """A judge that compares two responses to the same prompt (both orders asked)."""

    criterion: str = Field("helpful, honest and harmless: correct, clear, polite and safe", min_length=3,
                           description="What 'better' means in pairwise comparisons.")
    tie_margin: float = Field(0.05, ge=0, lt=0.5, description="|P(A better) - 0.5| below this is a tie.")


class EvaluationJudgeSpec(PairwiseJudgeSpec):
    """The evaluation judge of a recipe, with its own accuracy measured on a calibration set first."""

    calibration: DataSpec | None = Field(
        default_factory=lambda: DataSpec(path="data/judge_calibration.jsonl"),
        description="Pairs with a known better answer; the judge's accuracy on them (the `calibrate` step, "
        "cached on judge, template and data) is reported with every judged number.")
    at_chance: Literal["skip", "compute"] = Field(
        "skip", description="When the calibration interval does not clear 0.5 the judge is at chance: `skip` "
        "its comparisons (reported as not computed, saving their minutes) or `compute` them anyway.")

    def pairwise(self) -> PairwiseJudgeSpec:
        """The judge alone (what `calibrate` and `evaluate` read), without the recipe-level settings."""
        return PairwiseJudgeSpec.model_validate(self.model_dump(exclude={"calibration", "at_chance"}))


class EvaluateOptions(Strict):
    """The evaluate part of a recipe: judged win rate, harmlessness, over-refusal, length drift, reward
    and KL. The responses come from the recipe's `respond` steps; only what judges them is set here."""

    judge: EvaluationJudgeSpec | None = Field(default_factory=EvaluationJudgeSpec,
                                              description="The judge; null computes no judged numbers.")
    redteam_prompts: DataSpec | None = Field(default_factory=lambda: DataSpec(path="data/redteam_prompts.jsonl"),
                                             description="Harmful requests: the share answered is harmful compliance.")
    benign_prompts: DataSpec | None = Field(default_factory=lambda: DataSpec(path="data/benign_prompts.jsonl"),
                                            description="Benign requests with alarming words: refusals are over-refusal.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for the 95% intervals.")
    kl: GenerationSpec | None = Field(
        None, description="Sample the policy with these settings on the held-out prompts and estimate "
        "KL(policy ‖ reference) per response (k1, k3); null skips it (the rlhf recipes set it).")
    reward_model: ModelSpec | None = Field(
        None, description="A reward model (sequence classifier with one output) that scores policy and "
        "reference answers on the held-out prompts; the rlhf flow uses the reward model it trains.")


class ConstitutionSpec(Strict):
    """A constitution file; its content hash (not its path) goes into artifact keys."""

    path: str = Field("constitutions/harmlessness.yaml", min_length=1, description="Constitution YAML file.")
