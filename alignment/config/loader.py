"""Load YAML files (recipes, stage configs) into the config models, with errors a person can act on.

The models themselves live beside this module (``base``, ``stages``, ``rl``, ``recipes``); this module
only reads files and explains validation errors.

An error names the file, the line, the dotted key, the bad value and the fix, e.g.::

    flows/recipes/sft-to-dpo.yaml line 21: dpo.train.learning_rate = -1e-05: Input should be greater
    than 0. Fix: Peak learning rate; must be > 0.
"""

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from alignment.config.base import recorded_url

M = TypeVar("M", bound=BaseModel)


class RecipeError(ValueError):
    pass


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on the path `loc` (the key itself when it exists)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line if line is not None else (root.start_mark.line + 1 if root is not None else None)


def _field_help(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    cls: Any = model
    info = None
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return info.description if info else None
        info = fields[part]
        ann = info.annotation
        args = getattr(ann, "__args__", ())
        cls = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return info.description if info else None


def describe(exc: ValidationError, model: type[BaseModel], source: str, root: yaml.Node | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = source
        line = _line_of(root, loc) if root is not None else None
        if line:
            where += f" line {line}"
        if err["type"] == "extra_forbidden":
            parent = _field_help_parent(model, loc[:-1])
            fix = (f"remove it or use one of: {', '.join(parent)} (check for a typo)" if parent
                   else "remove it (check for a typo)")
            if "options" in parent and str(loc[-1]) in _field_help_parent(model, (*loc[:-1], "options")):
                fix = (f"a stage config holds its knobs under `options:`; move it there "
                       f"({'.'.join(str(p) for p in (*loc[:-1], 'options', loc[-1]))})")
            lines.append(f"{where}: {key}: unknown key. Fix: {fix}")
            continue
        value = err.get("input")
        if isinstance(value, str) and "://" in value:
            value = recorded_url(value)  # a URL is shown without user, password or query
        shown = "" if err["type"] == "missing" else f" = {value!r:.80}"
        hint = _field_help(model, loc)
        lines.append(f"{where}: {key}{shown}: {err['msg']}." + (f" Fix: {hint}" if hint else ""))
    return "\n".join(lines)


def _field_help_parent(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cls: Any = model
    for part in loc:
        info = getattr(cls, "model_fields", {}).get(part)
        if info is None:
            return []
        args = getattr(info.annotation, "__args__", ())
        cls = next((a for a in (info.annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if cls is None:
            return []
    return sorted(getattr(cls, "model_fields", {}))


MAX_YAML_BYTES = 1 << 20  # a recipe, stage config or constitution is text a person edits: 1 MiB at most


def read_yaml(path: Path, error: type[ValueError] = None) -> tuple[Any, yaml.Node | None]:
    """A YAML file a person edits, parsed safely: (data, node tree for line numbers). UTF-8 with or without
    a byte-order mark, any line endings; refused with a located message: not UTF-8, too large, anchors
    and aliases (a few lines of them can expand to gigabytes), invalid YAML."""
    error = error or RecipeError
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    raw = path.read_bytes()
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: {len(raw)} bytes; a YAML file here may have {MAX_YAML_BYTES} at most")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    try:
        for token in yaml.scan(text):
            if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
                raise error(f"{path} line {token.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are "
                            "not accepted here; write the values out")
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a config") from None


def load_yaml_model(path: Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Parse `path` and validate it as `model`; dotted `overrides` ("dpo.beta": 0.2) apply on top."""
    data, root = read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return validate_model(data, model, str(path), root, overrides)


def validate_model(data: dict[str, Any], model: type[M], source: str, root: yaml.Node | None = None,
                   overrides: dict[str, Any] | None = None) -> M:
    data = apply_overrides(data, overrides or {}, source)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe(e, model, source, root)) from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str = "overrides") -> dict[str, Any]:
    """Return a copy of `data` with each dotted key set, e.g. {"dpo.train.learning_rate": 1e-5}."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        if not isinstance(dotted, str) or not all(dotted.split(".")):
            raise RecipeError(f"{source}: override key {dotted!r} is not a dotted key like 'dpo.beta'")
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise RecipeError(f"{source}: override {dotted!r}: {part!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out
