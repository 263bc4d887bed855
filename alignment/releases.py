"""Releases: the record of a model promoted after its gates (and, when asked, a person) approved it.

``$ALIGNMENT_HOME/releases/<name>/v<N>.json`` holds one release: the artifact (id, directory, the
sha256 of every model file from its manifest), the run, the gate results, the approval (who, when, the
comment) and, when a hub repository is configured, where it was pushed or why it was not.
``current.json`` is the latest release. Records are written once (a new version never overwrites an old
one) and atomically. Runnable without Prefect; the flows call it from their `promote` step.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from alignment.artifacts import MANIFEST, alignment_home

HUB_TIMEOUT_S = 10


def releases_root() -> Path:
    return alignment_home() / "releases"


def artifact_of(model_dir: str) -> Path:
    """The artifact directory holding a stage's model (the manifest sits there)."""
    path = Path(model_dir)
    for candidate in (path, path.parent):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ValueError(f"{model_dir}: not an artifact of the store (no {MANIFEST}); only a model the flow made "
                     "can be promoted")


def _write_once(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.link(tmp, path)  # fails if the version exists: never overwrites
    tmp.unlink()


def push_to_hub(artifact: Path, repo: str, token_env: str) -> dict[str, Any]:
    """Upload the artifact's model to `repo` with the token in `$token_env`; a failure is recorded, not
    raised (the local release stands), and the token never appears in the record."""
    token = os.environ.get(token_env)
    if not token:
        return {"repo": repo, "pushed": False, "reason": f"${token_env} is not set"}
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo, private=True, exist_ok=True)
        folder = artifact / "model" if (artifact / "model").is_dir() else artifact
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=f"release of {artifact.name}")
        return {"repo": repo, "pushed": True, "commit": getattr(commit, "oid", None)}
    except Exception as e:  # noqa: BLE001 - offline, refused, rate-limited: the release is recorded either way
        return {"repo": repo, "pushed": False, "reason": f"{type(e).__name__}: {str(e).replace(token, '***')[:300]}"}


def promote(name: str, model_dir: str, *, run: dict[str, Any], gates: list[dict[str, Any]],
            approval: dict[str, Any] | None, hub_repo: str | None = None, token_env: str = "HF_TOKEN") -> dict[str, Any]:
    """Record a release of the model in `model_dir` (a store artifact); returns the record."""
    artifact = artifact_of(model_dir)
    manifest = json.loads((artifact / MANIFEST).read_text())
    folder = releases_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    version = 1 + max((int(p.stem[1:]) for p in folder.glob("v*.json") if p.stem[1:].isdigit()), default=0)
    record = {
        "name": name, "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifact_id": manifest["artifact_id"], "artifact_path": str(artifact),
        "files": {k: v["sha256"] for k, v in manifest.get("files", {}).items() if k.startswith("model/")},
        "run": run, "gates": gates, "approval": approval,
        "hub": push_to_hub(artifact, hub_repo, token_env) if hub_repo else None,
    }
    _write_once(folder / f"v{version}.json", record)
    current = folder / "current.json.tmp"
    current.write_text(json.dumps(record, indent=2, default=str))
    current.replace(folder / "current.json")
    record["path"] = str(folder / f"v{version}.json")
    return record
