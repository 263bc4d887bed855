"""Releases: the record of a model promoted after its gates (and, when asked, a person) approved it.

``$ALIGNMENT_HOME/releases/<name>/v<N>.json`` holds one release: the artifact (id, directory, the
sha256 of every model file from its manifest), the run, the gate results, the approval (who, when, the
comment) and, when a hub repository is configured, where it was pushed or why it was not.
``current.json`` is the latest release. One lock per release name serialises promotions; a record is
written to a temporary file, fsynced and linked into place (a version is never overwritten), and
``current.json`` only ever moves forward. Runnable without Prefect; the flows call it from their
`promote` step.
"""

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from alignment.artifacts import MANIFEST, alignment_home, fsync_dir


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


def _durable_tmp(folder: Path, data: dict[str, Any]) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    return Path(name)


def _write(folder: Path, name: str, data: dict[str, Any], replace: bool) -> None:
    tmp = _durable_tmp(folder, data)
    try:
        if replace:
            tmp.replace(folder / name)
        else:
            os.link(tmp, folder / name)  # fails if the version exists: never overwrites
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)


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
    if approval is not None and approval.get("artifact_id") != manifest["artifact_id"]:
        raise ValueError(f"the approval is for {approval.get('artifact_id')!r}, not for {manifest['artifact_id']!r}: "
                         "an approval releases only the artifact it was asked about")
    folder = releases_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one promotion of this name at a time: versions stay in order
        version = 1 + max((int(p.stem[1:]) for p in folder.glob("v*.json") if p.stem[1:].isdigit()), default=0)
        record = {
            "name": name, "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "artifact_id": manifest["artifact_id"], "artifact_path": str(artifact),
            "files": {k: v["sha256"] for k, v in manifest.get("files", {}).items() if k.startswith("model/")},
            "run": run, "gates": gates, "approval": approval,
            "hub": push_to_hub(artifact, hub_repo, token_env) if hub_repo else None,
        }
        _write(folder, f"v{version}.json", record, replace=False)
        _write(folder, "current.json", record, replace=True)
    record["path"] = str(folder / f"v{version}.json")
    return record
