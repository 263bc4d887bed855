"""An artifact store that cannot lie: per-file sizes and sha256 in the manifest, a size check on every
reuse, damaged artifacts (truncated manifest, deleted or truncated weights, changed bytes) moved aside
and rebuilt, `alignment verify`, read-only committed artifacts, a private home, leftovers of killed
writers cleaned, and a full disk (ENOSPC) failing cleanly."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from refusals import note

from alignment.artifacts import ArtifactStore, sha256_file
from alignment.config import DataSpec, ModelSpec, SFTStageConfig
from alignment.stages import sft

ROOT = Path(__file__).resolve().parent.parent


def config(**train) -> SFTStageConfig:
    return SFTStageConfig(model=ModelSpec(name="tiny-random"), data=DataSpec(path="data/sft_train.jsonl", max_rows=8),
                          options={"train": {"max_steps": 2, "batch_size": 4, "max_length": 96, **train}})


@pytest.fixture
def built(store):
    return sft.run(config())


def writable(path: Path) -> None:
    """Tests damage committed artifacts on purpose: make one file writable first (root ignores modes)."""
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)


def test_manifest_records_every_file_and_the_artifact_is_read_only(built, store):
    manifest = built.manifest()
    weights = Path(built.path) / "model" / "model.safetensors"
    assert manifest["files"]["model/model.safetensors"] == {"size": weights.stat().st_size, "sha256": sha256_file(weights)}
    assert "manifest.json" not in manifest["files"] and "config.json" in manifest["files"]
    for p in [Path(built.path), *Path(built.path).rglob("*")]:
        assert not stat.S_IMODE(p.stat().st_mode) & 0o222, f"{p} is writable"
    home = Path(os.environ["ALIGNMENT_HOME"])
    os.chmod(home, 0o755)  # as a umask of 022 would make it
    sft.run(config(learning_rate=1e-3))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700, "$ALIGNMENT_HOME (store, checkpoints, Prefect results) is private"


@pytest.mark.parametrize("damage", ["truncated manifest", "deleted weights", "truncated weights"])
def test_a_damaged_artifact_is_moved_aside_and_rebuilt(built, store, damage):
    path = Path(built.path)
    weights = path / "model" / "model.safetensors"
    if damage == "truncated manifest":
        writable(path / "manifest.json")
        (path / "manifest.json").write_text((path / "manifest.json").read_text()[:200])
    elif damage == "deleted weights":
        writable(weights)
        weights.unlink()
    else:
        writable(weights)
        weights.write_bytes(weights.read_bytes()[:1000])
    assert not store.complete("sft", built.key)
    logged = []
    again = sft.run(config(), sft.RunContext(log=logged.append))
    assert not again.reused and again.key == built.key and store.complete("sft", built.key)
    assert any("damaged artifact" in line and "moved to" in line for line in logged), logged
    aside = list((store.root / ".damaged").glob(f"sft-{built.key}-*.reason"))
    assert len(aside) == 1 and aside[0].read_text().strip(), "the reason is kept beside the damaged copy"


def test_alignment_verify_finds_changed_bytes_that_sizes_do_not_show(built, store):
    weights = Path(built.path) / "model" / "model.safetensors"
    writable(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(data))
    assert store.complete("sft", built.key), "the quick check on reuse compares sizes only"
    cmd = [sys.executable, "-m", "flows.service.cli", "verify"]
    env = {**os.environ, "ALIGNMENT_STORE": str(store.root)}
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"DAMAGED  sft/{built.key}: model/model.safetensors: its sha256 differs" in out.stdout
    fixed = subprocess.run([*cmd, "--fix"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0 and "moved to" in fixed.stdout and not store.path("sft", built.key).exists()


def test_a_killed_writers_temp_dir_is_cleaned_and_a_live_ones_kept(store):
    dead = store.root / ".tmp" / "sft-0123456789abcdef0123-999999-deadbeef"
    live = store.root / ".tmp" / f"sft-0123456789abcdef0123-{os.getpid()}-cafecafe"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half")
    sft.run(config())
    assert not dead.exists() and live.exists()


def test_a_full_disk_fails_cleanly_and_a_rerun_completes(store, monkeypatch):
    import alignment.stages.sft as mod

    real = mod.write_curves

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "curves.jsonl")

    monkeypatch.setattr(mod, "write_curves", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        sft.run(config(learning_rate=1e-3))
    assert not any((store.root / "sft").glob("*")) and not any((store.root / ".tmp").glob("*")), "nothing half-written"
    monkeypatch.setattr(mod, "write_curves", real)
    result = sft.run(config(learning_rate=1e-3))
    assert store.complete("sft", result.key) and not result.reused


def test_an_old_manifest_without_file_records_counts_as_damaged(built, store):
    manifest = Path(built.path) / "manifest.json"
    writable(manifest)
    data = json.loads(manifest.read_text())
    data["files"] = sorted(data["files"])  # the list older versions wrote
    manifest.write_text(json.dumps(data))
    assert store.problem("sft", built.key).startswith("manifest.json is unreadable or has no file records")
    assert ArtifactStore().complete("sft", built.key) is False


def test_a_manifest_cannot_make_the_store_read_files_outside_the_artifact(built, store, tmp_path):
    """Manifest entries are confined to the artifact: an absolute path, a `..` part or a symlink on the
    way make the artifact damaged (set aside and rebuilt), and the file named outside is never opened."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not the store's")
    root = Path(built.path)
    manifest = json.loads((root / "manifest.json").read_text())
    for rel, why in ((str(secret), "outside the artifact"), ("../../../secret.txt", "outside the artifact"),
                     ("model/link.txt", "symbolic link")):
        damaged = {**manifest, "files": {**manifest["files"], rel: {"size": 15, "sha256": sha256_file(secret)}}}
        writable(root / "manifest.json")
        (root / "manifest.json").write_text(json.dumps(damaged))
        if rel == "model/link.txt":
            os.chmod(root / "model", 0o755)
            (root / "model" / "link.txt").symlink_to(secret)
        problem = store.problem("sft", built.key, full=True)
        assert why in problem, rel
        note("7", f"a manifest entry {rel.replace(str(tmp_path), '<tmp>')!r}",
             f"damaged: {problem} (moved aside and rebuilt; the file is never opened)")
        (root / "model" / "link.txt").unlink(missing_ok=True)
    assert secret.read_text() == "not the store's"


def test_a_symlinked_artifact_directory_is_moved_aside_without_touching_its_target(built, store, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o500)
    link = store.path("sft", "f" * 20)
    link.symlink_to(target, target_is_directory=True)
    assert "symbolic link" in store.problem("sft", "f" * 20)
    moved = store.set_aside("sft", "f" * 20, "test")
    assert moved.is_symlink() and not os.path.lexists(link)
    assert stat.S_IMODE(target.stat().st_mode) == 0o500, "no chmod through the link"


def test_a_job_owns_its_keys_lock_until_its_block_ends_however_it_ends(store):
    """`with SPEC.start(...) as job`: the key's lock is taken by `done()` and released when the block ends,
    also when the compute step raises, so a later run of the key is not left waiting."""
    import fcntl


    lock_file = store.root / ".locks"

    def held(key: str) -> bool:
        with open(lock_file / f"sft-{key}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    with pytest.raises(RuntimeError, match="the compute step broke"):
        with sft.SPEC.start(config()) as job:
            assert job.done() is False, "an empty store: nothing stored, one process"
            assert held(job.key), "done() took the key's lock"
            raise RuntimeError("the compute step broke")
    assert not held(job.key), "released when the block raised"
