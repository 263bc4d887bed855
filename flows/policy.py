"""What a deployment run's parameters may change. Parameters arrive over the API, so they are untrusted:
a caller who reaches the server could otherwise run hub code (`trust_remote_code`), send an environment
variable's value to another host (`engine.base_url`, `api_key_env`) or read files anywhere. A run started
from a deployment is refused, before any stage, naming the key, when its recipe (after `overrides`):

- turns on `trust_remote_code` anywhere the served recipe does not;
- changes an engine's `base_url` or `api_key_env` from the served recipe's;
- names a local file or directory (data, constitution, model, accelerate config) outside the project and
  `$ALIGNMENT_HOME`;
- changes `gates` or `promote` (a caller could otherwise drop a gate, skip the approval or push to
  another hub repository).

This limits what a run's *parameters* can do. It is not a second lock behind the API credential: whoever
holds the credential can also edit a deployment's stored parameters (which this check compares against)
or resume a paused run, so the credential (mode 0600 under `$ALIGNMENT_HOME`) is the trust boundary.

The serving process may allow all of this explicitly (`alignment serve --allow-unsafe-parameters`, which
sets ``ALIGNMENT_ALLOW_UNSAFE_PARAMETERS=1`` for its runs). Runs started in-process (`alignment run`) are
the local user's own and are not checked.
"""

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignment.artifacts import alignment_home
from alignment.config import ConstitutionSpec, DataSpec, EngineSpec, LaunchSpec, ModelSpec
from alignment.models import BUILTINS

ALLOW = "ALIGNMENT_ALLOW_UNSAFE_PARAMETERS"
ROOT = Path(__file__).resolve().parent.parent


class PolicyError(ValueError):
    """Deployment parameters asked for something only the serving machine may allow."""


def _served(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _inside(path: str) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == root or root in resolved.parents for root in (ROOT, alignment_home()))


def _local(name: str) -> bool:
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def problems(value: Any, served: dict[str, Any], where: str = "") -> list[str]:
    """Every key of `value` (a recipe) that deployment parameters may not set, with why."""
    out: list[str] = []
    key = where.rstrip(".")
    if isinstance(value, ModelSpec):
        if value.trust_remote_code and _served(served, f"{key}.trust_remote_code") is not True:
            out.append(f"{key}.trust_remote_code = true (runs code from the model's repository)")
        if value.name not in BUILTINS and _local(value.name) and not _inside(value.name):
            out.append(f"{key}.name = {value.name!r} (a path outside the project and $ALIGNMENT_HOME)")
    elif isinstance(value, EngineSpec):
        for field in ("base_url", "api_key_env"):
            if getattr(value, field) != (_served(served, f"{key}.{field}") or EngineSpec.model_fields[field].default):
                out.append(f"{key}.{field} = {getattr(value, field)!r} (differs from the served recipe)")
    elif isinstance(value, DataSpec | ConstitutionSpec):
        if (isinstance(value, ConstitutionSpec) or _local(value.path)) and not _inside(value.path):
            out.append(f"{key}.path = {value.path!r} (a file outside the project and $ALIGNMENT_HOME)")
    elif isinstance(value, LaunchSpec):
        if value.accelerate_config is not None and not _inside(value.accelerate_config):
            out.append(f"{key}.accelerate_config = {value.accelerate_config!r} (outside the project and $ALIGNMENT_HOME)")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            out += problems(getattr(value, name), served, f"{where}{name}.")
    return out


def release_problems(recipe: BaseModel, served: dict[str, Any]) -> list[str]:
    """Gates and promotion are the serving machine's: a caller may not drop a gate or skip the approval."""
    out = []
    gates = [g.model_dump(mode="json") for g in getattr(recipe, "gates", [])]
    if gates != (served.get("gates") or []):
        out.append("gates (differ from the served recipe's: a caller may not remove or loosen them)")
    promote = getattr(recipe, "promote", None)
    if (promote.model_dump(mode="json") if promote is not None else None) != served.get("promote"):
        out.append("promote (differs from the served recipe's: approval, release name and hub repository)")
    return out


def check(recipe: BaseModel) -> None:
    """Refuse a deployment run's recipe that sets what only the serving machine may (see the module)."""
    from prefect.runtime import deployment

    if deployment.id is None or os.environ.get(ALLOW) == "1":
        return
    served = _served_recipe(deployment.id)
    found = problems(recipe, served) + release_problems(recipe, served)
    if found:
        raise PolicyError("deployment parameters may not set: " + "; ".join(found) + ". Run it in-process "
                          "(`alignment run`), or serve with `alignment serve --allow-unsafe-parameters` on a machine "
                          "whose API only trusted users reach")


def _served_recipe(deployment_id: str) -> dict[str, Any]:
    """The recipe the deployment was served with (its own default parameters, not the run's)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        return (c.read_deployment(deployment_id).parameters or {}).get("recipe") or {}
