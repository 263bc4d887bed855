"""What a deployment run may change. Parameters and job variables arrive over the API, so they are
untrusted; the authority is the recipe the serving process loaded (``flows.service.served``), never a copy the
API can edit. A run started from a deployment is refused before any stage, naming each key, when:

- its recipe (the `recipe` parameter after `overrides`) differs from the served recipe in a key that is
  not on the **allowlist**, or in an allowed key outside its bounds;
- it carries `job_variables` (a run may not choose its own command, environment or working directory);
- its deployment's entrypoint or pull steps differ from what `alignment deploy` created (pools).

The allowlist is the **tuning keys** (`TUNING`: learning rates, beta, loss type, KL coefficient, steps and
epochs up to 4× the served values, seeds, the RL method) plus what the one who serves adds (the recipe's
`parameters.allow`, `alignment serve --allow KEY[=MIN..MAX]` and `--allow-file KEY`). `NEVER` lists what
no allowlist can name: gates, promote, this policy, launch, trackers, judges, engines and
`trust_remote_code`. With gates or promote, nothing a gate's numbers are measured on (`MEASURED`: data and
evaluation files, `evaluate`, `generation`) may be allowed either, so a caller cannot re-point what the
gates guard. Paths (and model names, which can be paths) are allowed only as project-local files.

`alignment serve --allow-unsafe-parameters` lifts the recipe rules (not the job-variable and entrypoint
checks) for a machine whose API only trusted users reach; it is recorded with the served recipes, never
read from a run's environment. Runs started in-process (`alignment run`) are the local user's own and are
not checked.
"""

import fnmatch
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignment.artifacts import alignment_home, canonical
from alignment.config import AllowRule
from alignment.config.stages import DPOLoss
from alignment.data import LOCAL_SUFFIXES

ROOT = Path(__file__).resolve().parent.parent.parent
MISSING = "<unset>"
SEED = {"min": 0, "max": 2**31 - 1}

# (pattern, bounds, why): the keys deployment runs may change by default (README: the allowlist, under Security)
TUNING: list[tuple[str, dict[str, Any], str]] = [
    ("**.train.learning_rate", {"min": 1e-7, "max": 1e-3}, "the step size; above 1e-3 fine-tunes of these models diverge"),
    ("**.value_learning_rate", {"min": 1e-6, "max": 1e-1}, "PPO's value head, a fresh linear layer"),
    ("**.train.lr_scheduler", {"choices": ["linear", "cosine", "constant", "constant_with_warmup"]}, "the schedule"),
    ("**.train.warmup_ratio", {"min": 0, "max": 0.5}, "warm-up share"),
    ("**.train.epochs", {"min": 0.01, "max_factor": 4}, "cost: at most 4× the served epochs"),
    ("**.train.max_steps", {"min": 1, "max": 1000, "max_factor": 4},
     "cost: at most 4× the served steps (1,000 when the served run counts epochs)"),
    ("**.iterations", {"min": 1, "max_factor": 4}, "PPO iterations, at most 4× the served ones"),
    ("iterate.rounds", {"min": 1, "max_factor": 2}, "iterative-DPO rounds, at most 2× the served ones"),
    ("**.beta", {"min": 0, "max": 1}, "DPO / GRPO / RLOO: strength of the pull to the reference"),
    ("**.loss_type", {"choices": [loss.value for loss in DPOLoss]}, "DPO loss variant"),
    ("**.kl_coef", {"min": 0, "max": 1}, "PPO's KL penalty coefficient"),
    ("algorithm", {"choices": ["ppo", "grpo", "rloo"]}, "rlhf: the policy optimiser (SFT and reward come from cache)"),
    ("rl_method", {"choices": ["dpo", "ppo", "iterative-dpo"]}, "constitutional-ai: the RL-CAI method"),
    ("iterate.reference", {"choices": ["moving", "fixed"]}, "iterative DPO: the DPO reference of each round"),
    ("**.train.seed", SEED, "training seeds (data order, adapter init)"),
    ("**.rollout.seed", SEED, "RL rollout sampling seeds"),
    ("iterate.sampling.seed", SEED, "iterative-DPO sampling seed"),
    ("samples.seed", SEED, "constitutional-ai: sampling of the compared responses"),
    ("critique.seed", SEED, "constitutional-ai: principle and example sampling"),
    ("feedback.seed", SEED, "constitutional-ai: principle and example sampling"),
]

# (pattern, why): keys no allowlist may name
NEVER: list[tuple[str, str]] = [
    ("gates", "the gates guard the release"), ("gates.**", "the gates guard the release"),
    ("promote", "approval, release name and hub repository"), ("promote.**", "approval, release name and hub repository"),
    ("parameters", "this policy itself"), ("parameters.**", "this policy itself"),
    ("launch", "processes and machines; a multi-node profile opens a rendezvous port"),
    ("launch.**", "processes and machines"), ("**.launch", "processes and machines"), ("**.launch.**", "processes and machines"),
    ("**.report_to", "trackers send data off the machine"),
    ("**.judge*", "judges"), ("**.judge*.**", "judges"),
    ("**.engine", "engines: endpoints and the keys sent to them"), ("**.engine.**", "engines: endpoints and keys"),
    ("**.trust_remote_code", "runs code from a model's repository"),
]

# keys a gate's numbers are measured on: never allowed in a recipe with gates or promote
MEASURED = ["eval_prompts", "eval_prompts.**", "evaluate", "evaluate.**", "benchmark", "benchmark.**", "generation", "generation.**",
            "**.eval_data", "**.eval_data.**", "**.heldout_fraction", "**.path", "**.name"]


class PolicyError(ValueError):
    """Deployment parameters asked for something only the serving machine may allow."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of a recipe dump: sections recurse, anything else (lists included) is one value."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): canonical(tree)}


def matches(pattern: str, key: str) -> bool:
    """`pattern` (dotted; `*` one part, `**` any number of parts, globs inside a part) matches `key`."""
    def go(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "**":
            return any(go(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and fnmatch.fnmatchcase(k[0], p[0]) and go(p[1:], k[1:])
    return go(pattern.split("."), key.split("."))


def never(key: str) -> str | None:
    return next((why for pattern, why in NEVER if matches(pattern, key)), None)


def _is_path_key(key: str) -> bool:
    return key.endswith((".path", ".name")) or key in ("path", "name")


def tuning_rules() -> list[AllowRule]:
    return [AllowRule(key=pattern, **bounds) for pattern, bounds, _ in TUNING]


def rules_for(recipe: BaseModel, extra: list[AllowRule] = ()) -> list[AllowRule]:
    """The allowlist of a recipe about to be served: the tuning keys (unless `parameters.tuning: false`),
    the recipe's own `parameters.allow`, then `extra` (from the command line). A rule that names no key of
    the recipe, a key no allowlist may name, a path without `file: true`, or (with gates or promote) a key
    the gates are measured on, is an error naming the rule and the fix."""
    leaves = flatten(recipe.model_dump(mode="json"))
    guarded = bool(getattr(recipe, "gates", None)) or getattr(recipe, "promote", None) is not None
    policy = recipe.parameters
    own = [(f"parameters.allow[{i}]", r) for i, r in enumerate(policy.allow)] + [(f"--allow {r.key}", r) for r in extra]
    for where, rule in own:
        hit = [k for k in leaves if matches(rule.key, k)]
        if not hit:
            close = sorted(k for k in leaves if k.split(".")[-1] == rule.key.split(".")[-1])[:5]
            raise PolicyError(f"{where}: {rule.key!r} names no key of this recipe"
                              + (f" (keys ending like it: {', '.join(close)})" if close else ""))
        for key in hit:
            if isinstance(leaves[key], list) or (leaves[key] is None and _section_field(recipe, key)):
                raise PolicyError(f"{where}: {key} is a {'list' if leaves[key] is not None else 'section'}; "
                                  "deployment parameters may change single values only (allow its fields, or set "
                                  "it in the recipe and serve again)")
            if why := never(key):
                raise PolicyError(f"{where}: {key} can never be changed by deployment parameters ({why}); change it "
                                  "in the recipe and serve again")
            if guarded and any(matches(p, key) for p in MEASURED):
                raise PolicyError(f"{where}: {key} is measured by the gates or the release of this recipe; with gates "
                                  "or promote it cannot be opened to deployment parameters (serve a recipe without them)")
            if _is_path_key(key) != rule.file:
                raise PolicyError(f"{where}: {key} {'is' if _is_path_key(key) else 'is not'} a file or model path; "
                                  f"{'add' if _is_path_key(key) else 'remove'} `file: true`")
    return (tuning_rules() if policy.tuning else []) + [r for _, r in own]


def _section_field(model: BaseModel, key: str) -> bool:
    """The field at dotted `key` (null in this recipe) holds a section (a model) when set."""
    import types
    import typing

    node: Any = type(model)
    for part in key.split("."):
        field = getattr(node, "model_fields", {}).get(part)
        if field is None:
            return False
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        options = typing.get_args(field.annotation) if union else (field.annotation,)
        node = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        if node is None:
            return False
    return True


def _project_file(value: Any) -> str | None:
    """Why `value` is not a project-local data file (None: it is)."""
    if not isinstance(value, str):
        return "not a path"
    path = (ROOT / value).resolve() if not Path(value).is_absolute() else Path(value).resolve()
    if ROOT not in path.parents:
        return "outside the project"
    rel = path.relative_to(ROOT)
    if path == alignment_home() or alignment_home() in path.parents or any(p.startswith(".") for p in rel.parts):
        return "inside a hidden or private directory of the project"
    if not path.name.endswith(LOCAL_SUFFIXES):
        return f"not a data file ({', '.join(LOCAL_SUFFIXES)})"
    if not path.is_file():
        return "no such file"
    return None


def _out_of_bounds(rule: AllowRule, served: Any, value: Any) -> str | None:
    if rule.file:
        return _project_file(value)
    if rule.choices is not None and value not in rule.choices:
        return f"not one of {rule.choices}"
    numeric = (rule.min, rule.max, rule.max_factor)
    if any(b is not None for b in numeric):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return "not a number"
        if rule.min is not None and value < rule.min:
            return f"below {rule.min:g}"
        if rule.max is not None and value > rule.max:
            return f"above {rule.max:g}"
        if rule.max_factor is not None:
            base = served if isinstance(served, int | float) and not isinstance(served, bool) else None
            if base is not None and base > 0:
                if value > rule.max_factor * base:
                    return f"above {rule.max_factor:g} × the served {base:g}"
            elif rule.max is None:
                return "no ceiling: the served recipe leaves it unset"
    return None


def violations(served: dict[str, Any], recipe: dict[str, Any], rules: list[AllowRule]) -> list[str]:
    """Every key where `recipe` differs from the `served` one that the allowlist does not allow (pure). A
    section set to null, or a null one filled in, is one finding (its key), not one per field."""
    a, b = flatten(served), flatten(recipe)
    changed = {key for key in set(a) | set(b) if a.get(key, MISSING) != b.get(key, MISSING)}

    def value(leaves: dict[str, Any], key: str) -> Any:
        if key in leaves:
            return leaves[key]
        return "<section>" if any(k.startswith(key + ".") for k in leaves) else MISSING

    out = []
    for key in sorted(changed):
        parts = key.split(".")
        if any(".".join(parts[:i]) in changed for i in range(1, len(parts))):
            continue  # inside a section reported as a whole
        old, new = value(a, key), value(b, key)
        shown = f"{key} = {new!r} (served: {old!r})"
        if why := never(key):
            out.append(f"{shown}: never changed by deployment parameters ({why})")
            continue
        if "<section>" in (old, new) or isinstance(new, list) or isinstance(old, list):
            out.append(f"{shown}: a section or list is set, removed or replaced only in the served recipe")
            continue
        rule = next((r for r in reversed(rules) if matches(r.key, key)), None)  # the last rule wins
        if rule is None:
            out.append(f"{shown}: not on the allowlist")
        elif problem := _out_of_bounds(rule, None if old == MISSING else old, new):
            out.append(f"{shown}: {problem} (allowed: {rule.model_dump(exclude_defaults=True)})")
    return out


def check(recipe: BaseModel) -> None:
    """Refuse a deployment run that changes what only the serving machine may (see the module)."""
    from prefect.context import FlowRunContext

    from flows.service import served

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is None or run.deployment_id is None:
        return  # in-process: the local user's own run
    try:
        deployment, record = _record(run, ctx.flow.name)
    except served.NotServed as e:
        raise PolicyError(str(e)) from None
    found = []
    if run.job_variables:
        found.append(f"job_variables = {sorted(run.job_variables)} (a run may not choose its command, environment "
                     "or working directory)")
    if record.get("entrypoint") is not None:  # pools: the worker runs what `alignment deploy` created
        for field in ("entrypoint", "pull_steps", "job_variables"):
            if canonical(getattr(deployment, field) or None) != canonical(record[field] or None):
                found.append(f"the deployment's {field} (changed through the API since `alignment deploy`)")
    if not record.get("unsafe"):
        rules = [AllowRule.model_validate(r) for r in record["rules"]]
        found += violations(record["parameters"]["recipe"], recipe.model_dump(mode="json"), rules)
    if found:
        raise PolicyError(f"deployment {record['flow']}/{record['deployment']}: parameters may not set: "
                          + "; ".join(found) + ". What runs may change is the served recipe's allowlist (README: "
                          "the allowlist, under Security); for anything else edit the recipe and serve it again, or run "
                          "it in-process (`alignment run`)")


def _record(run, flow: str):
    from prefect.client.orchestration import get_client

    from flows.service import served

    with get_client(sync_client=True) as c:
        deployment = c.read_deployment(run.deployment_id)
    return deployment, served.load(flow, deployment.name)
