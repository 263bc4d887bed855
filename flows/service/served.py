"""What was served: the authority every deployment run is checked against, never a copy the API can edit.

`alignment serve` (the serve process, as it loads its recipes) and `alignment deploy` (as it creates
pool deployments) write one record per deployment under ``$ALIGNMENT_HOME/run/served/<by>/<flow>/
<deployment>.json`` (mode 0600; ``<by>`` is ``serve`` or ``pool-<name>``): the parameters it was served
with (the whole recipe, `refresh`), the allowlist of keys runs may change (``flows.service.policy``), the
allow-unsafe switch, and for pool deployments the entrypoint, pull steps and job variables the worker
must find unchanged. The process that runs the flows (the serve process, `alignment worker`) puts
``ALIGNMENT_SERVED_BY`` and a digest of those records in its runs' environment; a run checks the
records against the digest, so it is judged by what its own serving process loaded, not by a later
serve or by anything stored behind the API (a deployment's parameters there can be PATCHed).
"""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from alignment import processes

BY_ENV = "ALIGNMENT_SERVED_BY"
DIGEST_ENV = "ALIGNMENT_SERVED_DIGEST"


class NotServed(ValueError):
    """A deployment run this machine did not serve, or whose record changed under it."""


def folder(by: str) -> Path:
    return processes.run_dir() / "served" / by


def _path(by: str, flow: str, deployment: str) -> Path:
    for part in (by, flow, deployment):
        if not part or "/" in part or part.startswith("."):
            raise NotServed(f"{part!r} cannot name a served deployment")
    return folder(by) / flow / f"{deployment}.json"


def write(by: str, records: list[dict[str, Any]]) -> str:
    """Replace the records of `by` with `records` (each with `flow` and `deployment`); returns their digest.
    Written into a new directory that is renamed into place: a run never sees half a set."""
    root = folder(by)
    tmp = root.with_name(f".{by}-{uuid.uuid4().hex[:8]}")
    for record in records:
        path = tmp / record["flow"] / f"{record['deployment']}.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
    old = root.with_name(f".{by}-old-{uuid.uuid4().hex[:8]}")
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return digest(by)


def records(by: str) -> list[dict[str, Any]]:
    """Every record of `by` (none yet: empty)."""
    root = folder(by)
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))] if root.is_dir() else []


def digest(by: str) -> str:
    """sha256 over every record of `by`, by relative path and content."""
    h = hashlib.sha256()
    root = folder(by)
    for p in sorted(root.rglob("*.json")) if root.is_dir() else []:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load(flow: str, deployment: str) -> dict[str, Any]:
    """The record of `flow/deployment` for this run, as its serving process loaded it."""
    by, expected = os.environ.get(BY_ENV), os.environ.get(DIGEST_ENV)
    if not by or not expected:
        raise NotServed("this deployment run was not started by `alignment serve` or `alignment worker` (their runs "
                        f"carry {BY_ENV}); serve the recipe with one of them, or run it in-process (`alignment run`)")
    if digest(by) != expected:
        raise NotServed(f"the served records under {folder(by)} changed after the process running this deployment "
                        "started (another `alignment serve` or `alignment deploy`): restart it (`alignment serve`, "
                        "or the `alignment worker`) so that it runs what it records")
    path = _path(by, flow, deployment)
    if not path.is_file():
        raise NotServed(f"deployment {flow}/{deployment} was not served from this machine (no record {path}); a "
                        "deployment created through the API is not one of ours")
    return json.loads(path.read_text())
