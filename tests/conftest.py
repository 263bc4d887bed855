"""Test setup: every test session gets its own store, model cache and Prefect home (nothing shared with
the user's ./.alignment), the working directory is the project root (recipes use relative data paths),
and tiny models are built locally from a config. Nothing here touches the network."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
_HOME = Path(tempfile.mkdtemp(prefix="alignment-tests-"))
os.environ["ALIGNMENT_HOME"] = str(_HOME)
os.environ.pop("ALIGNMENT_STORE", None)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_HOME / "prefect-results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
for var in ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_PROFILES_PATH"):
    os.environ.pop(var, None)
os.chdir(ROOT)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def home() -> Path:
    return _HOME


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh, empty artifact store for one test."""
    from alignment.artifacts import ArtifactStore

    monkeypatch.setenv("ALIGNMENT_STORE", str(tmp_path / "store"))
    return ArtifactStore()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite in a temp dir) for every test that runs flows in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def tiny_recipe():
    from alignment.config import SftToDpoRecipe
    from alignment.config.loader import load_yaml_model

    return load_yaml_model(ROOT / "flows" / "recipes" / "tiny.yaml", SftToDpoRecipe)


@pytest.fixture(scope="session")
def hh_rlhf() -> Path:
    path = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present (it lives in ../shared beside the checkout)")
    return path
