"""Typed configuration: one pydantic model per concern, shared by stages, recipes and Prefect flows.

Every model forbids unknown keys (a typo in a recipe is an error, never silently ignored) and documents
each field once through ``Field(description=...)``; the same models are the Prefect flow parameters, so
the server validates ``--param`` overrides against the same rules.

Modules: ``base`` (building blocks), ``stages`` (stage configs; its docstring explains the
Options / Section / StageConfig naming: a stage config holds one options object), ``rl`` (reward
sources, PPO/GRPO/RLOO), ``recipes`` (one per flow), ``loader`` (YAML files → these models, with located errors). Every model is importable from
``alignment.config``.
"""

from alignment.config.base import (  # noqa: F401
    AdapterMode,
    AdapterSpec,
    ArtifactRef,
    ConstitutionSpec,
    DataFormat,
    DataSpec,
    EngineKind,
    EngineSpec,
    EvaluateOptions,
    EvaluationJudgeSpec,
    GenerationSpec,
    JudgeSpec,
    LaunchSpec,
    ModelSpec,
    Options,
    PairwiseJudgeSpec,
    StageConfig,
    Strict,
    TrainingOptions,
    TrainSpec,
)
from alignment.config.recipes import (  # noqa: F401
    AllowRule,
    ConstitutionalAIRecipe,
    GateCondition,
    IterativeDPORecipe,
    ParameterPolicy,
    PromoteOptions,
    RecipeBase,
    RLHFRecipe,
    RoundOptions,
    SftToDpoRecipe,
)
from alignment.config.rl import (  # noqa: F401
    GroupRLOptions,
    GRPOStageConfig,
    PairsStageConfig,
    PPOOptions,
    PPOStageConfig,
    RewardMix,
    RewardSources,
    RLAlgorithm,
    RLOOOptions,
    RLOOStageConfig,
    RLStageConfig,
    RuleReward,
)
from alignment.config.stages import (  # noqa: F401
    BenchmarkOptions,
    BenchmarkStageConfig,
    CalibrateStageConfig,
    CritiqueReviseOptions,
    CritiqueReviseStageConfig,
    DPOLoss,
    DPOOptions,
    DPOSection,
    DPOStageConfig,
    EvaluateStageConfig,
    FeedbackOptions,
    FeedbackStageConfig,
    GenerateStageConfig,
    RespondStageConfig,
    RewardOptions,
    RewardSection,
    RewardStageConfig,
    SFTOptions,
    SFTSection,
    SFTStageConfig,
    TaxStageConfig,
)
