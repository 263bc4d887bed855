"""The parameter policy for deployment runs (untrusted input from the API) and a port that is not ours.
The locked API itself (401 without the credential, CSRF, CORS, the UI's login) is tests/test_e2e.py."""

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from alignment.config.loader import recipe_path
from flows.policy import problems
from flows.registry import load_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served():
    _, recipe = load_recipe(str(recipe_path("tiny")))
    return recipe, recipe.model_dump(mode="json")


def changed(recipe, overrides):
    from alignment.config import SftToDpoRecipe
    from alignment.config.loader import validate_model

    return validate_model(recipe.model_dump(mode="json"), SftToDpoRecipe, "overrides", overrides=overrides)


def test_the_served_recipe_passes(served):
    recipe, params = served
    assert problems(recipe, params) == []


@pytest.mark.parametrize("overrides,named", [
    ({"model.trust_remote_code": True}, "model.trust_remote_code = true"),
    ({"evaluate.judge.model.trust_remote_code": True}, "evaluate.judge.model.trust_remote_code = true"),
    ({"engine.kind": "openai", "engine.base_url": "http://evil.example/v1"}, "engine.base_url = 'http://evil.example/v1'"),
    ({"evaluate.judge.engine.api_key_env": "AWS_SECRET_ACCESS_KEY"}, "evaluate.judge.engine.api_key_env"),
    ({"sft.data.path": "/etc/passwd"}, "sft.data.path = '/etc/passwd'"),
    ({"eval_prompts.path": "../../secrets.jsonl"}, "eval_prompts.path = '../../secrets.jsonl'"),
    ({"model.name": "/home/someone/model"}, "model.name = '/home/someone/model'"),
    ({"launch": {"accelerate_config": "/tmp/mine.yaml"}}, "launch.accelerate_config = '/tmp/mine.yaml'"),
])
def test_deployment_parameters_may_not_set(served, overrides, named):
    recipe, params = served
    found = problems(changed(recipe, overrides), params)
    assert any(named in f for f in found), found


def test_hub_ids_and_files_in_the_project_are_fine(served, home):
    recipe, params = served
    ok = changed(recipe, {"model.name": "org/some-model", "sft.data.path": "data/pref_train.jsonl",
                          "dpo.data.path": str(ROOT / "data" / "pref_train.jsonl")})
    assert problems(ok, params) == []


def test_serve_refuses_a_port_that_is_not_our_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    httpd = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "ALIGNMENT_HOME": str(tmp_path), "ALIGNMENT_PREFECT_PORT": str(port),
               "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        p = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "--recipe", "tiny"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    finally:
        httpd.shutdown()
    assert p.returncode == 1 and f"port {port} on 127.0.0.1 is held by something that is not" in p.stderr, p.stderr
    credential = tmp_path / "run" / "api-auth"
    assert oct(credential.stat().st_mode & 0o777) == "0o600" and credential.read_text().startswith("alignment:")


def test_engine_urls_carry_no_credentials_and_no_queries():
    """A user:password, a query or a fragment in `engine.base_url` (where pasted keys end up) is refused,
    naming the fix, and the message shows the URL without them; so do a non-http URL and a bad port."""
    from pydantic import ValidationError

    from alignment.config import EngineSpec
    from alignment.config.loader import describe

    for url in ("https://user:s3cret@api.example.com/v1", "https://api.example.com/v1?api_key=s3cret",
                "https://api.example.com/v1#s3cret"):
        with pytest.raises(ValidationError, match="api_key_env") as e:
            EngineSpec(kind="openai", base_url=url)
        shown = describe(e.value, EngineSpec, "recipe.yaml")  # what the CLI prints
        assert "base_url = 'https://api.example.com/v1'" in shown and "s3cret" not in shown, shown
    with pytest.raises(ValidationError, match="not an http"):
        EngineSpec(kind="openai", base_url="file:///etc/passwd")
    with pytest.raises(ValidationError, match="out of range|Port"):
        EngineSpec(kind="openai", base_url="http://127.0.0.1:99999/v1")
    assert EngineSpec(kind="openai", base_url="http://127.0.0.1:8000/v1").base_url == "http://127.0.0.1:8000/v1"
