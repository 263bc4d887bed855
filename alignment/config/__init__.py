"""Typed configuration: one pydantic model per concern, shared by stages, recipes and Prefect flows.

Every model forbids unknown keys (a typo in a recipe is an error, never silently ignored) and documents
each field once through ``Field(description=...)``; the same models are the Prefect flow parameters, so
the server validates ``--param`` overrides against the same rules.

Modules: ``base`` (building blocks), ``stages`` (stage configs), ``rl`` (reward sources, PPO/GRPO/RLOO),
``recipes`` (one per flow). Everything is importable from ``alignment.config``.
"""

from alignment.config.base import (  # noqa: F401
    AdapterMode,
    AdapterSpec,
    ConstitutionSpec,
    DataFormat,
    DataSpec,
    EngineKind,
    EngineSpec,
    EvaluateSettings,
    GenerationSpec,
    JudgeSpec,
    ModelSpec,
    StageInput,
    Strict,
    TrainSpec,
)
from alignment.config.recipes import (  # noqa: F401
    RL_ALGORITHMS,
    RLHF_STEPS,
    STAGES,
    ConstitutionalAIRecipe,
    RLHFRecipe,
    SftToDpoRecipe,
)
from alignment.config.rl import (  # noqa: F401
    GroupRLOptions,
    GRPOStageConfig,
    PPOOptions,
    PPOStageConfig,
    RewardMix,
    RewardSources,
    RLOOStageConfig,
    RLStageInput,
    RuleReward,
    _rollout_default,
)
from alignment.config.stages import (  # noqa: F401
    BaselineStageConfig,
    CritiqueReviseSettings,
    CritiqueReviseStageConfig,
    DPOLoss,
    DPOOptions,
    DPOSettings,
    DPOStageConfig,
    EvaluateStageConfig,
    FeedbackSettings,
    FeedbackStageConfig,
    GenerateStageConfig,
    RewardOptions,
    RewardSettings,
    RewardStageConfig,
    SFTOptions,
    SFTSettings,
    SFTStageConfig,
)
