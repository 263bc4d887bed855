"""One module per stage, each exposing ``run(config, context=None) -> StageResult``."""

from alignment.artifacts import StageResult
from alignment.stages.common import RunContext, artifact_key

__all__ = ["RunContext", "StageResult", "artifact_key", "runner"]


def runner(stage: str):
    """The ``run`` function of a stage, imported lazily (stages pull in torch and TRL)."""
    from importlib import import_module

    return import_module(f"alignment.stages.{stage}").run
