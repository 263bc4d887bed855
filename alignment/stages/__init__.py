"""One module per stage, each declaring ``SPEC`` (``alignment.stages.contract.StageSpec``) and exposing
``run(config, context=None) -> StageResult``. The registry below finds them: a module in this package
with a ``SPEC`` is a stage; nothing else lists stage names.

Stage modules import torch, TRL and vLLM only inside the functions that need them, so finding the
stages is cheap.
"""

import pkgutil
from functools import lru_cache
from importlib import import_module
from types import ModuleType

from alignment.artifacts import StageResult
from alignment.stages.contract import Plan, RunContext, StageSpec

__all__ = ["Plan", "RunContext", "StageResult", "StageSpec", "module", "names", "plan", "runner", "spec", "spec_for"]


@lru_cache(maxsize=1)
def _modules() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        mod = import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(mod, "SPEC", None), StageSpec):
            found[mod.SPEC.name] = mod
    return found


def names() -> tuple[str, ...]:
    """Every stage name, sorted."""
    return tuple(sorted(_modules()))


def module(stage: str) -> ModuleType:
    mods = _modules()
    if stage not in mods:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(sorted(mods))}")
    return mods[stage]


def spec(stage: str) -> StageSpec:
    return module(stage).SPEC


def runner(stage: str):
    """The ``run`` function of a stage."""
    return module(stage).run


def spec_for(config) -> StageSpec:
    """The stage whose config class `config` is an instance of (each stage has its own class)."""
    for mod in _modules().values():
        if type(config) is mod.SPEC.config:
            return mod.SPEC
    raise TypeError(f"{type(config).__name__} is no stage's config class")


def plan(config) -> Plan:
    """The stage `config` belongs to, with its key and identity worked out (``StageSpec.plan``)."""
    return spec_for(config).plan(config)
