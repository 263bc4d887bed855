"""What a flow declares about itself, once: ``FLOW = FlowSpec(...)`` at the end of its module.

The registry (``flows.registry``) finds every module of the ``flows`` package (and of the
``alignment.flows`` entry point group, and of ``$ALIGNMENT_FLOWS``) that has a ``FLOW``, as
``alignment.stages`` finds stages by their ``SPEC``; nothing else lists flows. The CLI, serve, deploy and
``alignment validate`` read the registry, and a recipe names the flow it drives
(``flow:``). Adding a flow is one module and its recipe.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignment.config import RecipeBase, StageConfig


class Configs:
    """A flow's typed builder of its stage configs: made once per run from the recipe as the run sees it
    (``Chain.open``, overrides applied), it turns each recipe section into its stage's options once
    (``XOptions.of(section, recipe.launch)``) and builds every step's config from them (``chain.configs``).
    A flow subclasses it with one typed method per stage config it builds; ``training()`` returns its
    training stages' configs with the base model for every upstream model (what the flow's preflight
    validates and ``alignment validate`` reports the data of)."""

    def __init__(self, recipe: Any):
        self.recipe = recipe

    def training(self) -> dict[str, StageConfig]:
        return {}


def _no_check(configs: Configs) -> None:
    return None


@dataclass(frozen=True)
class FlowSpec:
    """One flow's facts.

    - ``name``: the Prefect flow name (deployments are ``<name>/<name>`` and ``<name>/rerun-<step>``);
    - ``recipe``: its recipe model (a ``RecipeBase`` whose ``flow`` is ``name``);
    - ``function``: the ``@flow`` function (called with ``recipe``, ``refresh``, ``overrides``);
    - ``steps(recipe)``: the steps a recipe runs, in order (one ``rerun-<step>`` deployment each);
    - ``gate_labels(recipe)``: every label a run may show, what gates may name (default: ``steps``);
    - ``configs``: its ``Configs`` builder class (one instance per run);
    - ``preflight(configs)``: the flow's own checks of every input, before any model loads (the run's
      builder; ``configs.recipe`` is the recipe);
    - ``expand_refresh(recipe, refresh)``: refresh labels as the chain sees them (rounds: a round and after);
    - ``default_recipe``: the recipe `alignment serve` and `alignment deploy` use when none is named.
    """

    name: str
    recipe: type[RecipeBase]
    function: Callable[..., Any]
    steps: Callable[[Any], tuple[str, ...]]
    configs: type[Configs] = Configs
    preflight: Callable[[Any], None] = _no_check
    gate_labels: Callable[[Any], tuple[str, ...]] | None = None
    expand_refresh: Callable[[Any, list[str]], list[str]] | None = None
    default_recipe: str | None = None
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        declared = self.recipe.model_fields.get("flow")
        if declared is None or declared.default != self.name:
            raise TypeError(f"flow {self.name}: its recipe model {self.recipe.__name__} must declare "
                            f"`flow: Literal[{self.name!r}] = {self.name!r}`")
        prefect_name = getattr(self.function, "name", None)
        if prefect_name != self.name:
            raise TypeError(f"flow {self.name}: its function is a @flow named {prefect_name!r}; name it {self.name!r}")

    @property
    def module(self) -> str:
        return self.function.fn.__module__ if hasattr(self.function, "fn") else self.function.__module__

    @property
    def entrypoint(self) -> str:
        """``path/to/module.py:function`` (what a pool deployment loads): relative to the checkout for the
        project's flows, the module's absolute path for a flow that lives elsewhere (a plugin, a user's module)."""
        import inspect
        from pathlib import Path

        fn = self.function.fn if hasattr(self.function, "fn") else self.function
        path = Path(inspect.getsourcefile(inspect.unwrap(fn))).resolve()
        root = Path(__file__).resolve().parent.parent
        return f"{path.relative_to(root) if path.is_relative_to(root) else path}:{fn.__name__}"

    def labels(self, recipe: Any) -> tuple[str, ...]:
        return (self.gate_labels or self.steps)(recipe)

    def check(self, recipe: Any, configs: Configs | None = None) -> None:
        """Every input, before any model loads: the flow's own preflight (data files, constitution,
        calibration set), the gates' steps, then every model path and launch config the recipe names.
        `configs`: the run's builder (made here when not given)."""
        from alignment.gates import check_recipe

        self.preflight(configs if configs is not None else self.configs(recipe))
        check_recipe(recipe, self.labels(recipe))
        check_paths(recipe)

    def refresh_labels(self, recipe: Any, refresh: list[str] | None) -> list[str]:
        refresh = list(refresh or [])
        return self.expand_refresh(recipe, refresh) if self.expand_refresh else refresh


def check_paths(value: Any, where: str = "") -> None:
    """Local model directories exist and are models; accelerate configs exist and make sense."""
    from pydantic import BaseModel

    from alignment import launch
    from alignment.config import LaunchSpec, ModelSpec
    from alignment.models import check_model

    if isinstance(value, ModelSpec):
        check_model(value, where.rstrip(".") or "model")
    elif isinstance(value, LaunchSpec):
        launch.plan(value, where.rstrip("."))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            check_paths(getattr(value, name), f"{where}{name}.")
