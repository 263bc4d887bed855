"""Training past one process, in the default tier: launch plans and what of them is hashed, a real
2-process launch of SFT (DDP over gloo on this CPU), resume after a real kill -9 (SFT inside a running
flow, and PPO), a damaged newest checkpoint, and two runs of one key at once. The other stages under
DDP and DeepSpeed ZeRO-2/3 are tests/test_distributed.py (marker `distributed`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment import launch, stages
from alignment.config import DataSpec, LaunchSpec, ModelSpec, PPOStageConfig, RewardSources, SFTStageConfig

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "alignment" / "launch_profiles"
TINY = ModelSpec(name="tiny-random")


def sft_config(**train) -> SFTStageConfig:
    return SFTStageConfig(model=TINY, data=DataSpec(path="data/sft_train.jsonl", max_rows=32),
                          options={"train": {"max_steps": 6, "batch_size": 4, "max_length": 96, "learning_rate": 5e-3,
                                             "logging_steps": 1, **train}})


def test_plans_and_their_errors(tmp_path):
    assert launch.plan(None) == launch.LaunchPlan() and not launch.plan(LaunchSpec(num_processes=1)).multi_process
    ddp = launch.plan(LaunchSpec(num_processes=2))
    assert ddp.num_processes == 2 and ddp.accelerate_config.endswith("alignment/launch_profiles/ddp.yaml"), "processes alone: DDP"
    z3 = launch.plan(LaunchSpec(accelerate_config=str(INFRA / "zero3.yaml"), num_processes=4))
    assert (z3.distributed_type, z3.zero_stage, z3.num_processes) == ("DEEPSPEED", 3, 4)
    assert launch.plan(LaunchSpec(accelerate_config=str(INFRA / "zero2.yaml"))).num_processes == 8, "the file's count"
    with pytest.raises(ValueError, match="accelerate config 'nope.yaml' not found.*ddp.yaml"):
        launch.plan(LaunchSpec(accelerate_config="nope.yaml"))
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="FSDP needs GPUs"):
            launch.plan(LaunchSpec(accelerate_config=str(INFRA / "fsdp.yaml")))
    unsafe = tmp_path / "z3.yaml"
    unsafe.write_text((INFRA / "zero3.yaml").read_text().replace("zero3_save_16bit_model: true", "zero3_save_16bit_model: false"))
    with pytest.raises(ValueError, match="zero3_save_16bit_model: true"):
        launch.plan(LaunchSpec(accelerate_config=str(unsafe)))
    odd = tmp_path / "odd.yaml"
    odd.write_text("distributed_type: MULTI_TPU_PLEASE\n")
    with pytest.raises(ValueError, match="distributed_type 'MULTI_TPU_PLEASE'"):
        launch.plan(LaunchSpec(accelerate_config=str(odd)))


def test_the_key_hashes_what_changes_the_result_not_where_or_how_fast(tmp_path):
    sft = stages.spec("sft")
    z2 = str(INFRA / "zero2.yaml")
    base = sft.key(sft_config().with_options(launch=LaunchSpec(accelerate_config=z2, num_processes=2)))
    moved = tmp_path / "mine.yaml"
    moved.write_text((INFRA / "zero2.yaml").read_text().replace("offload_optimizer_device: none",
                                                                "offload_optimizer_device: cpu"))
    same = sft.key(sft_config().with_options(launch=LaunchSpec(accelerate_config=str(moved), num_processes=2)))
    assert same == base, "another path, offloading: speed and placement only"
    for other in (LaunchSpec(accelerate_config=z2, num_processes=4), LaunchSpec(accelerate_config=str(INFRA / "zero3.yaml"),
                                                                              num_processes=2), None):
        assert sft.key(sft_config().with_options(launch=other)) != base, other
    assert sft.key(sft_config(checkpoint_every=3, report_to=["tensorboard"])) == sft.key(sft_config())


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private ALIGNMENT_HOME (store, checkpoints, the tiny model built anew) for tests that start
    subprocesses."""
    monkeypatch.setenv("ALIGNMENT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALIGNMENT_STORE", raising=False)
    return tmp_path / "home"


def test_sft_trains_in_two_processes_and_rank_0_writes_the_artifact(home):
    from transformers import AutoModelForCausalLM

    logged = []
    context = stages.RunContext(log=logged.append, progress=lambda f, m: logged.append(("progress", f)))
    result = stages.runner("sft")(sft_config().with_options(launch=LaunchSpec(num_processes=2)), context)
    manifest = result.manifest()
    assert manifest["launch"]["num_processes"] == 2 and manifest["launch"]["distributed_type"] in ("MULTI_CPU", "MULTI_GPU")
    assert result.metrics["loss_last"] < result.metrics["loss_first"] and not result.reused
    assert manifest["resolved"] == {"options.adapter.mode": "lora", "model.dtype": "float32"}, "the parent's record kept"
    assert AutoModelForCausalLM.from_pretrained(Path(result.path) / "model").num_parameters() > 0
    assert any(isinstance(x, tuple) for x in logged), "rank 0's progress reached the parent"
    assert any("rank" in str(x).lower() or "loss" in str(x) for x in logged if isinstance(x, str)), "log lines streamed"
    assert not (home / "checkpoints" / "sft" / result.key).exists(), "checkpoints go once the artifact is committed"
    assert stages.runner("sft")(sft_config().with_options(launch=LaunchSpec(num_processes=2))).reused


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoints_of(home: Path, stage: str) -> list[Path]:
    return [p for p in (home / "checkpoints" / stage).glob("*/*") if p.is_dir() and not p.name.startswith(".")]


def test_a_flow_killed_mid_sft_resumes_sft_from_its_checkpoint(home, prefect_harness):
    """`alignment run tiny` in a subprocess, SIGKILLed after SFT wrote a checkpoint; the same command again
    marks the killed run Crashed, resumes SFT there (resumed_from_step > 0) and the flow completes."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ALIGNMENT_HOME": str(home)}
    cmd = [sys.executable, "-m", "flows.service.cli", "run", "tiny", "-p", "sft.train.max_steps=400",
           "-p", "sft.train.checkpoint_every=20", "-p", "evaluate=null"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((c / "trainer_state.json").is_file() for c in checkpoints_of(home, "sft")), 240,
                 "SFT's first checkpoint")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    assert not list((home / "store" / "sft").glob("*/manifest.json")), "killed before SFT finished"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "marked 1 run(s) whose process had ended as Crashed" in again.stderr, "the killed run left Running"
    manifest = json.loads(next((home / "store" / "sft").glob("*/manifest.json")).read_text())
    assert manifest["resumed_from_step"] >= 20 and manifest["metrics"]["steps"] == 400
    assert not checkpoints_of(home, "sft"), "checkpoints removed after the commit"


def ppo_file(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in "ab cd ef gh".split()))
    cfg = PPOStageConfig(model=TINY, prompts=DataSpec(path=str(prompts)), reward=RewardSources(rule={"contains": "e"}),
                         options={"iterations": 200, "rollout_batch": 4, "ppo_epochs": 1,
                                  "rollout": {"temperature": 1.0, "max_new_tokens": 6},
                                  "train": {"batch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 3}})
    path = tmp_path / "ppo.json"
    path.write_text(cfg.model_dump_json())
    return path


def test_ppo_killed_by_sigkill_resumes_from_its_checkpoint(home, tmp_path):
    config = ppo_file(tmp_path)
    cmd = [sys.executable, "-m", "alignment.stages.ppo", "--config", str(config)]
    env = {**os.environ, "ALIGNMENT_HOME": str(home)}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(p.name.startswith("iter-") for p in checkpoints_of(home, "ppo")), 240, "PPO's first checkpoint")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads(again.stdout[again.stdout.index("{\n"):])
    assert result["metrics"]["resumed_from_step"] >= 3 and result["metrics"]["iterations"] == 200


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    from alignment import training

    for step in (2, 4):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        __import__("torch").save({"state": step}, ckpt / "optimizer.pt")
    newest = tmp_path / "checkpoint-4" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # killed mid-write
    assert training.resume_point(tmp_path) == tmp_path / "checkpoint-2"
    assert (tmp_path / "damaged-checkpoint-4").is_dir() and not (tmp_path / "checkpoint-4").exists()


def test_two_runs_of_one_key_at_once_compute_it_once(home):
    """The second waits for the first's lock, then returns its artifact."""
    cfg = home.parent / "sft.json"
    cfg.write_text(sft_config(max_steps=60).model_dump_json())
    cmd = [sys.executable, "-m", "alignment.stages.sft", "--config", str(cfg)]
    env = {**os.environ, "ALIGNMENT_HOME": str(home)}
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(2)]
    outs = []
    for p in runs:
        stdout, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        outs.append(json.loads(stdout[stdout.index("{\n"):]))
    assert sorted(o["reused"] for o in outs) == [False, True] and outs[0]["key"] == outs[1]["key"]
    assert len(list((home / "store" / "sft").iterdir())) == 1


def test_two_flow_runs_of_one_recipe_at_once_compute_each_stage_once(tmp_path, prefect_harness, monkeypatch):
    """Two `alignment run tiny` started together on an empty store: both complete; every stage is written
    by one run and reused by the other (the per-key lock); one artifact per key, each whole."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ALIGNMENT_HOME": str(home)}
    cmd = [sys.executable, "-m", "flows.service.cli", "run", "tiny", "-p", "evaluate=null", "-p", "sft.train.max_steps=30"]
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    both = "".join(outs)
    labels = ("respond_base", "sft", "respond_sft", "dpo", "respond_dpo")
    for label in labels:  # a stage is reused through Prefect's cache (Cached) or the store's lock (reused)
        assert both.count(f"- {label}: wrote artifact") == 1, f"{label} computed twice or never:\n{both[-4000:]}"
    store = home / "store"
    assert {p.name: len(list(p.iterdir())) for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")} == {
        "sft": 1, "dpo": 1, "respond": 3, "benchmark": 3, "tax": 1}
    from alignment.artifacts import ArtifactStore

    monkeypatch.setenv("ALIGNMENT_STORE", str(store))
    assert all(ArtifactStore().problem(p.parent.name, p.name, full=True) is None for p in store.glob("*/*") if p.is_dir())


def test_trackers_log_to_tensorboard_and_a_missing_tracker_is_a_clear_error(home):
    pytest.importorskip("tensorboard", reason="tensorboard is in the pinned environment (requirements*.lock)")
    result = stages.runner("sft")(sft_config(report_to=["tensorboard"]))
    runs = home / "tensorboard" / f"sft-{result.key}"
    assert list(runs.rglob("events.out.tfevents.*")), "TensorBoard event files, outside the removed checkpoints"
    from importlib.util import find_spec

    missing = next((t for t in ("mlflow", "wandb", "trackio") if find_spec(t) is None), None)
    if missing:
        import alignment.stages.sft as mod

        with pytest.raises(ValueError, match=rf"train.report_to: \['{missing}'\] set but not installed"):
            mod.validate(sft_config(report_to=[missing]))


def test_ppo_logs_to_tensorboard(home, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the pinned environment (requirements*.lock)")
    cfg = PPOStageConfig.model_validate_json(ppo_file(tmp_path).read_text())
    o = cfg.options
    cfg = cfg.with_options(iterations=2, train=o.train.model_copy(update={"report_to": ["tensorboard"]}))
    result = stages.runner("ppo")(cfg)
    assert list((home / "tensorboard" / f"ppo-{result.key}").rglob("events.out.tfevents.*"))


def fake_launch(monkeypatch, script: str) -> launch.LaunchPlan:
    """Make `launch.run` start `script` (python) instead of accelerate: the streaming, failure and process
    group handling are what is tested, without training."""
    monkeypatch.setattr(launch, "command", lambda plan, stage, config_file: [sys.executable, "-c", script])
    return launch.LaunchPlan(num_processes=2, distributed_type="MULTI_CPU")


def test_a_failed_launch_reports_its_last_log_lines_and_progress_flows_back(monkeypatch):
    script = ("import json, sys\n"
              "print('ALIGNMENT_PROGRESS ' + json.dumps({'fraction': 0.5, 'metrics': {'loss': 1.5}}), flush=True)\n"
              "for i in range(100): print(f'line {i}', flush=True)\n"
              "sys.exit(3)\n")
    lines, progress = [], []
    with pytest.raises(launch.LaunchError, match=r"exited with 3; last lines of its log:\n(.|\n)*line 99") as e:
        launch.run(fake_launch(monkeypatch, script), "sft", Path("x.json"), {}, {}, lines.append,
                   lambda f, m: progress.append((f, m)))
    assert "line 39" not in str(e.value), "only the tail"
    assert progress == [(0.5, {"loss": 1.5})] and len(lines) == 100 and lines[0] == "line 0"


def test_killing_the_parent_leaves_no_rank_behind(tmp_path):
    """A parent launches two 'ranks' (they start grandchildren and sleep); SIGKILL of the parent: each rank
    notices its parent is gone and exits (`watch_parent`); SIGTERM: the parent kills the whole group."""
    rank = tmp_path / "rank.py"
    rank.write_text("import os, subprocess, sys, time\n"
                    "from alignment import launch\n"
                    "launch.watch_parent()\n"
                    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                    f"open({str(tmp_path)!r} + f'/pid-{{os.getpid()}}-{{p.pid}}', 'w').write('')\n"
                    "time.sleep(120)\n")
    parent = tmp_path / "parent.py"
    parent.write_text("import sys\nfrom pathlib import Path\nfrom alignment import launch\n"
                      f"launch.command = lambda *a: [sys.executable, {str(rank)!r}]\n"
                      "launch.run(launch.LaunchPlan(num_processes=2), 'sft', Path('x'), {}, {}, print, None)\n")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        for f in tmp_path.glob("pid-*"):
            f.unlink()
        proc = subprocess.Popen([sys.executable, str(parent)], cwd=ROOT)
        wait_for(lambda: len(list(tmp_path.glob("pid-*"))) == 1, 60, "the rank to start")
        pids = [int(x) for x in next(tmp_path.glob("pid-*")).name.split("-")[1:]]  # the rank and its child
        proc.send_signal(sig)
        proc.wait(timeout=30)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

        wait_for(lambda pids=pids: all(gone(p) for p in pids), 20, f"the rank and its child to exit after the parent's {sig.name}")
