"""Prompt templates: Jinja files in ``prompts/``, rendered through one sandboxed, strict environment.

Users edit these files, so rendering is sandboxed (no attribute access to Python internals) and strict
(a variable the caller did not pass is an error, never an empty string). Each template declares its
version and variables in its first lines::

    {# version: 1 #}
    {# vars: question, response_a, response_b, criterion #}

``template_version(name)`` (declared version + content hash) goes into every artifact key and every row
a judge labels, so editing a template reruns exactly what depends on it.
"""

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
_HEADER = re.compile(r"\{#\s*(version|vars):\s*(.*?)\s*#\}")


class PromptError(ValueError):
    pass


MAX_RANGE = 1000  # `range()` in a template: enough for option letters, not for a render that never ends


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError(f"range of {len(r)} items in a template; at most {MAX_RANGE}")
    return r


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(loader=FileSystemLoader(str(PROMPTS_DIR)), undefined=StrictUndefined,
                               autoescape=False, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
    env.globals["range"] = _range
    return env


def header(name: str) -> dict[str, str]:
    path = PROMPTS_DIR / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in PROMPTS_DIR.glob("*.jinja")))
        raise PromptError(f"prompt template {name!r} not found in {PROMPTS_DIR}; known: {known}")
    try:
        found = dict(_HEADER.findall(path.read_text(encoding="utf-8-sig")))
    except UnicodeDecodeError:
        raise PromptError(f"{path}: not UTF-8; save the template as UTF-8") from None
    for key in ("version", "vars"):
        if key not in found:
            raise PromptError(f"{path}: missing the '{{# {key}: ... #}}' header line")
    return found


def template_version(name: str) -> str:
    text = (PROMPTS_DIR / name).read_text(encoding="utf-8")
    return f"{name}@{header(name)['version']}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def render(name: str, **variables: object) -> str:
    declared = {v.strip() for v in header(name)["vars"].split(",") if v.strip()}
    missing, extra = declared - set(variables), set(variables) - declared
    if missing or extra:
        raise PromptError(f"{PROMPTS_DIR / name}: declared vars {sorted(declared)}; missing {sorted(missing)}, "
                          f"unexpected {sorted(extra)}")
    try:
        return environment().get_template(name).render(**variables).strip()
    except (TemplateError, OverflowError, RecursionError, TypeError, ValueError) as e:
        line = getattr(e, "lineno", None)
        raise PromptError(f"{PROMPTS_DIR / name}{f' line {line}' if line else ''}: {type(e).__name__}: {e}; "
                          "fix the template (prompts/README.md)") from None


def validate_all() -> list[str]:
    """Render every template with placeholder values for its declared variables (CI runs this)."""
    names = sorted(p.name for p in PROMPTS_DIR.rglob("*.jinja"))
    for name in names:
        declared = [v.strip() for v in header(name)["vars"].split(",") if v.strip()]
        render(name, **{v: f"<{v}>" if v != "options" else ["<option 1>", "<option 2>"] for v in declared})
    return names
