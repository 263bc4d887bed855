"""The flows, found by their declarations: a module with ``FLOW`` (``flows.spec.FlowSpec``) is a flow.

Where they are looked for: the modules of this package (the project's flows), the ``alignment.flows``
entry point group (a flow another package installs), and ``$ALIGNMENT_FLOWS`` (comma-separated module
names, e.g. a flow module of your own on ``PYTHONPATH``). A recipe says which flow it drives (its
``flow:`` key), so a recipe's file name decides nothing. The CLI, serve, deploy, the server and
``alignment validate`` ask this module; nothing else lists flows.
"""

import os
import pkgutil
from functools import lru_cache
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignment.config.loader import RecipeError, load_yaml_model, read_yaml
from flows.spec import FlowSpec

ENV = "ALIGNMENT_FLOWS"
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def _candidates() -> list[str]:
    import flows

    own = [f"flows.{m.name}" for m in pkgutil.iter_modules(flows.__path__) if not m.ispkg]
    plugins = [ep.value.split(":")[0] for ep in entry_points(group="alignment.flows")]
    named = [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]
    return own + plugins + named


@lru_cache(maxsize=4)
def _flows(env: str) -> dict[str, FlowSpec]:
    found: dict[str, FlowSpec] = {}
    for name in _candidates():
        try:
            module = import_module(name)
        except ImportError as e:
            if name.startswith("flows."):
                raise
            raise RecipeError(f"${ENV} or an alignment.flows entry point names {name!r}, which does not import "
                              f"({e}); fix the module name or its PYTHONPATH") from None
        spec = getattr(module, "FLOW", None)
        if not isinstance(spec, FlowSpec):
            continue
        if spec.name in found and found[spec.name] is not spec:
            raise RecipeError(f"two modules declare the flow {spec.name!r}: {found[spec.name].module} and {name}")
        found[spec.name] = spec
    return dict(sorted(found.items()))


def flows() -> dict[str, FlowSpec]:
    """Every flow, by name (sorted)."""
    return _flows(os.environ.get(ENV, ""))


def names() -> tuple[str, ...]:
    return tuple(flows())


def get(name: str) -> FlowSpec:
    found = flows()
    if name not in found:
        raise RecipeError(f"unknown flow {name!r}; flows: {', '.join(found)}")
    return found[name]


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of one under ``flows/recipes/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(recipe_names())
        raise RecipeError(f"recipe {name_or_path!r} not found; known recipes: {known}, or pass a path to a YAML file")
    return candidate


def recipe_names() -> list[str]:
    """The recipes shipped under ``flows/recipes/``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def flow_of(path: Path) -> str:
    """The flow a recipe file names in its ``flow:`` key (checked before anything else in the file)."""
    data, root = read_yaml(path, RecipeError)
    known = ", ".join(names())
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    if "flow" not in data:
        raise RecipeError(f"{path}: no `flow:` key; a recipe says which flow it drives, e.g. `flow: "
                          f"sft-to-dpo` as its first line (flows: {known})")
    flow = data["flow"]
    if not isinstance(flow, str) or flow not in flows():
        where = _key_line(root, "flow")
        raise RecipeError(f"{path}{where}: flow: {flow!r} is not a flow; flows: {known}")
    return flow


def _key_line(root: Any, key: str) -> str:
    for k, _ in getattr(root, "value", []) or []:
        if getattr(k, "value", None) == key:
            return f" line {k.start_mark.line + 1}"
    return ""


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[FlowSpec, BaseModel]:
    """The recipe's flow and the recipe, validated by that flow's recipe model (errors name file and line)."""
    path = recipe_path(name_or_path)
    spec = get(flow_of(path))
    if overrides and "flow" in overrides:
        raise RecipeError(f"overrides: flow = {overrides['flow']!r}: a recipe's flow is its file's `flow:` key, "
                          "not an override; use a recipe of that flow")
    return spec, load_yaml_model(path, spec.recipe, overrides)


def data_report(spec: FlowSpec, recipe: BaseModel) -> list[str]:
    """Per training stage's data: rows, identical pairs dropped, rows over `train.max_length` (estimated)."""
    from alignment.data import estimated_tokens, load_data

    out = []
    for name, config in spec.configs(recipe).training().items():
        data_spec = getattr(config, "data", None)
        if data_spec is None:
            continue
        kind = "sft" if name == "sft" else "preference"
        data = load_data(data_spec, kind)
        over = sum(estimated_tokens(r) > config.options.train.max_length for r in data.rows)
        pairs = f", {data.dropped_identical} identical pairs dropped" if kind == "preference" else ""
        out.append(f"{name}.data {data_spec.path}: {len(data.rows)} rows used{pairs}, {over} over train.max_length = "
                   f"{config.options.train.max_length} (estimated; the trainer truncates or drops them)")
    return out
