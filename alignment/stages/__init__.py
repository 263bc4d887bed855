"""One module per stage, each exposing ``run(config, context=None) -> StageResult``."""

from alignment.artifacts import StageResult
from alignment.stages.common import RunContext, artifact_key

__all__ = ["ALL_STAGES", "RunContext", "StageResult", "artifact_key", "config_class", "runner"]

ALL_STAGES = ("baseline", "sft", "dpo", "evaluate", "generate", "critique_revise", "feedback", "reward", "ppo",
              "grpo", "rloo")


def runner(stage: str):
    """The ``run`` function of a stage, imported lazily (stages pull in torch and TRL)."""
    from importlib import import_module

    return import_module(f"alignment.stages.{stage}").run


def config_class(stage: str):
    """The pydantic config class of a stage (its module's ``CONFIG``)."""
    from importlib import import_module

    return import_module(f"alignment.stages.{stage}").CONFIG
