"""Content-addressed artifact store.

A stage output lives in ``<store>/<stage>/<key>/`` where ``key`` hashes exactly what determines it (the
stage's declaration, ``alignment.stages.contract``, says what that is): the config fields the stage reads,
with data files replaced by their content hash and upstream models and artifacts by their artifact id,
template versions, the device kind, the code version and a refresh salt. Outputs are written into ``<store>/.tmp/`` and renamed into place
only once complete, with ``manifest.json`` written last, so a directory that exists is a finished
artifact and a crash leaves nothing that looks done. The key is also the Prefect cache key.
"""

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
KEY_CHARS = 20  # 80 bits of sha256: collisions are not a practical concern for one user's store


def alignment_home() -> Path:
    """Where the store, model cache and Prefect results live (``$ALIGNMENT_HOME``, default ``./.alignment``)."""
    return Path(os.environ.get("ALIGNMENT_HOME", ".alignment")).resolve()


def store_root() -> Path:
    return Path(os.environ.get("ALIGNMENT_STORE", alignment_home() / "store")).resolve()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical(obj: Any) -> Any:
    """Equal values hash equally: 300 and 300.0 (a default vs the same value read back from JSON) alike."""
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()


def source_hash(root: Path) -> str:
    """A hash of every Python file under `root`, by relative path and content."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the library's Python sources: a code change invalidates caches."""
    from alignment import __version__

    return f"{__version__}+{source_hash(Path(__file__).parent)}"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "prefect", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def stage_key(stage: str, identity: dict[str, Any]) -> str:
    """The artifact key of `stage` for a fully resolved identity (config, input hashes, code version)."""
    return sha256_json({"stage": stage, **identity})[:KEY_CHARS]


class ArtifactError(ValueError):
    """A path that should be a store artifact is not one (or not of the expected stage)."""


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at `path`, or a clear error naming the path."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise ArtifactError(f"{path}: not a finished artifact (no {MANIFEST}); pass a stage result's path")
    return json.loads(p.read_text())


def artifact_identity(path: str | Path, stage: str | None = None) -> str:
    """The artifact id (``<stage>/<key>``) at `path`: what keys hash instead of the path."""
    artifact_id = read_manifest(path)["artifact_id"]
    if stage is not None and not artifact_id.startswith(f"{stage}/"):
        raise ArtifactError(f"{path}: a {artifact_id.split('/')[0]} artifact, expected a {stage} artifact")
    return artifact_id


@dataclass
class StageResult:
    """What a stage returns and a flow passes on: small, JSON-friendly, no models."""

    stage: str
    key: str
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # True when the store already held this artifact and nothing was computed

    @property
    def artifact_id(self) -> str:
        return f"{self.stage}/{self.key}"

    def manifest(self) -> dict[str, Any]:
        return json.loads((Path(self.path) / MANIFEST).read_text())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ArtifactStore:
    """Artifacts by stage and key. "Complete" means the manifest parses and every file it lists is there
    with its recorded size (a quick check on every reuse; ``verify`` also compares sha256). A damaged
    artifact is moved aside to ``.damaged/`` (with the reason beside it) so the stage rebuilds it."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else store_root()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def problem(self, stage: str, key: str, full: bool = False) -> str | None:
        """What is wrong with the artifact (None: it is whole). Sizes always; `full`: sha256 too."""
        p = self.path(stage, key)
        if p.is_symlink():
            return "the artifact directory is a symbolic link (artifacts are real directories of the store)"
        if not (p / MANIFEST).is_file():
            return "missing"
        if (p / MANIFEST).is_symlink():
            return f"{MANIFEST} is a symbolic link"
        try:
            files = json.loads((p / MANIFEST).read_text())["files"]
            records = [(rel, int(rec["size"]), rec["sha256"]) for rel, rec in files.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{MANIFEST} is unreadable or has no file records ({type(e).__name__}: {e})"
        for rel, size, digest in records:
            if (outside := _outside(p, rel)) is not None:
                return f"the manifest lists {rel!r}, {outside}"
            f = p / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes; the manifest says {size} (truncated or replaced)"
            if full and sha256_file(f) != digest:
                return f"{rel}: its sha256 differs from the manifest's (changed after it was written)"
        return None

    def complete(self, stage: str, key: str) -> bool:
        return self.problem(stage, key) is None

    def load(self, stage: str, key: str) -> StageResult:
        p = self.path(stage, key)
        m = json.loads((p / MANIFEST).read_text())
        return StageResult(stage=stage, key=key, path=str(p), metrics=m.get("metrics", {}), reused=True)

    def set_aside(self, stage: str, key: str, reason: str) -> Path:
        """Move a damaged artifact to ``.damaged/<stage>-<key>-<time>`` (reason in a ``.reason`` file beside it)."""
        dest = self.root / ".damaged" / f"{stage}-{key}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = self.path(stage, key)
        if not source.is_symlink():  # a link is moved as it is: never chmod what it points to
            os.chmod(source, 0o755)  # moving a directory updates its `..` entry: it must be writable
        os.rename(source, dest)
        dest.with_name(dest.name + ".reason").write_text(reason + "\n")
        return dest

    def lock(self, stage: str, key: str):
        """Take the key's lock (an exclusive ``flock``; waits while another process holds it) and return the
        open lock file; closing it (or the process ending, even by SIGKILL) releases the lock. Two runs of
        the same key therefore never compute it at once or clobber each other's checkpoints."""
        import fcntl

        path = self.root / ".locks" / f"{stage}-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def clean_tmp(self) -> list[Path]:
        """Remove temp dirs of writers that are gone (a killed run's half artifact); returns what went."""
        gone = []
        for tmp in (self.root / ".tmp").glob("*"):
            try:
                pid = int(tmp.name.rsplit("-", 2)[1])
            except (IndexError, ValueError):
                pid = 0
            if not _alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)
                gone.append(tmp)
        return gone

    @contextlib.contextmanager
    def writer(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a private temp dir; on success it is fsynced, renamed to the artifact path and made
        read-only; on error removed."""
        private_home()
        self.clean_tmp()
        tmp = self.root / ".tmp" / f"{stage}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            if not (tmp / MANIFEST).is_file():
                raise RuntimeError(f"stage {stage} finished without writing {MANIFEST}")
            final = self.path(stage, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_tree(tmp)
            try:
                os.rename(tmp, final)  # atomic on one file system
            except OSError:
                if not self.complete(stage, key):  # another run finished the same key first: keep theirs
                    raise
            else:
                fsync_dir(final.parent)
                _read_only(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _outside(root: Path, rel: str) -> str | None:
    """Why the manifest entry `rel` is not a plain file inside the artifact `root` (None: it is): an absolute
    path, a `..` part, or a symbolic link on the way would make the store stat and hash files elsewhere."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts:
        return "a path outside the artifact"
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            return "through a symbolic link"
    return None


def private_home() -> Path:
    """``$ALIGNMENT_HOME`` (store, checkpoints, Prefect's result files) readable by its owner only."""
    home = alignment_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if home.stat().st_uid == os.getuid() and home.stat().st_mode & 0o077:
        os.chmod(home, 0o700)
    return home


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and directory under `root` on disk before the rename that makes the artifact visible."""
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def _read_only(root: Path) -> None:
    """A committed artifact is not edited in place: files 0444, directories 0555."""
    for p in root.rglob("*"):
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    os.chmod(root, 0o555)


def write_manifest(
    out_dir: Path,
    *,
    stage: str,
    key: str,
    identity: dict[str, Any],
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    started: float,
    run_context: dict[str, Any] | None = None,
    resolved: dict[str, str] | None = None,
    launch: dict[str, Any] | None = None,
) -> None:
    files = {p.relative_to(out_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "artifact_id": f"{stage}/{key}",
        "stage": stage,
        "key": key,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - started, 2),
        "inputs": inputs,
        "identity": identity,
        "resolved": resolved or {},  # what each `auto` setting became on this machine
        "launch": launch or {},  # processes, distributed type, ZeRO stage, precision, accelerate config hash
        "resumed_from_step": metrics.get("resumed_from_step", 0),  # 0: not resumed from a checkpoint
        "code_version": code_version(),
        "libraries": library_versions(),
        "metrics": metrics,
        "run": run_context or {},
        "files": files,  # per file: size (checked on every reuse) and sha256 (`alignment verify`)
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
