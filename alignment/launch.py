"""Training past one process: a stage runs under ``accelerate launch`` with a plain accelerate config file.

A training stage's ``launch`` section names an accelerate config (``shipped profiles: ``alignment/launch_profiles/*.yaml``, by name`` or the user's
own) and/or a process count. With one process (the default) the stage trains in the calling process.
With more, the calling process (the Prefect task, or ``alignment stage``) is the *parent*: it writes the
resolved stage config to a file and starts ``accelerate launch ... -m alignment.stages.<stage> --config
<file>`` in a new process group, streams every line into its log, turns rank 0's progress lines into
progress updates, and on failure raises with the last lines of the log. Killing or cancelling the parent
takes the whole group down: it kills the group on SIGTERM/SIGINT, and every rank watches the parent's pid
and exits when it is gone (SIGKILL included), so no rank is orphaned. Rank 0 alone writes the artifact.

What is hashed (``identity``): the process count (global batch = batch_size × grad_accum × processes, and
the data order depend on it), the ZeRO stage and the mixed precision, which change the numbers. What only
changes speed or placement is not: offload devices, machine addresses, ports, GPU ids, the file's path.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(__file__).resolve().parent / "launch_profiles"  # the shipped accelerate configs
CHILD = "ALIGNMENT_LAUNCH_CHILD"  # set in every rank's environment: "this process is one of N"
PARENT_PID = "ALIGNMENT_LAUNCH_PARENT"
RUN_CONTEXT = "ALIGNMENT_RUN_CONTEXT"  # the parent's lineage ids (flow run, task run), JSON
RESOLVED = "ALIGNMENT_RESOLVED"  # what the parent resolved `auto` to (the ranks get the resolved config), JSON
PROGRESS = "ALIGNMENT_PROGRESS "  # prefix of rank 0's progress lines on stdout
DISTRIBUTED_TYPES = {"NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED", "FSDP", "MULTI_XPU", "MULTI_NPU"}
TAIL = 60  # log lines kept for the error message of a failed launch


class LaunchError(RuntimeError):
    """The launched stage failed; the message carries the last lines of its log."""


@dataclass(frozen=True)
class LaunchPlan:
    """A launch resolved from its spec and config file (what the manifest records)."""

    num_processes: int = 1
    distributed_type: str = "NO"
    zero_stage: int | None = None
    mixed_precision: str = "no"
    accelerate_config: str | None = None
    accelerate_config_sha256: str | None = None
    num_machines: int = 1
    machine_rank: int = 0  # > 0: this machine joins a launch whose rank 0 (on machine 0) writes the artifact

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    def identity(self) -> dict[str, Any]:
        """What the artifact key hashes (see the module docstring for what is left out and why)."""
        return {"num_processes": self.num_processes, "zero_stage": self.zero_stage,
                "mixed_precision": self.mixed_precision}


def _read_config(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in PROFILES.glob("*.yaml"))) if PROFILES.is_dir() else "none"
        raise ValueError(f"{where}: accelerate config {str(path)!r} not found; use a file of your own or a "
                         f"shipped profile by name ({known}; they are in alignment/launch_profiles/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e}); expected an accelerate config file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (an accelerate config file, as `accelerate config` writes)")
    return data


def profile_path(name: str) -> Path:
    """An accelerate config: a file path, or the name of a shipped profile (`zero3`, `zero3.yaml`)."""
    if "/" not in name and not Path(name).is_file():
        shipped = PROFILES / (name if name.endswith(".yaml") else f"{name}.yaml")
        if shipped.is_file():
            return shipped
    return Path(name)


def plan(spec, where: str = "launch") -> LaunchPlan:
    """Resolve a ``LaunchSpec`` (or None: one process). Errors name the key, the value and the fix."""
    if spec is None or (spec.accelerate_config is None and (spec.num_processes or 1) == 1):
        return LaunchPlan()
    if spec.accelerate_config is None:  # processes without a file: plain data parallelism
        path = PROFILES / "ddp.yaml"
    else:
        path = profile_path(spec.accelerate_config)
    data = _read_config(path, f"{where}.accelerate_config")
    dtype = str(data.get("distributed_type", "NO")).upper()
    if dtype not in DISTRIBUTED_TYPES:
        raise ValueError(f"{path}: distributed_type {dtype!r} is not one accelerate knows; use one of "
                         f"{sorted(DISTRIBUTED_TYPES)}")
    n = spec.num_processes or int(data.get("num_processes", 1))
    if dtype == "FSDP" and not _cuda():
        raise ValueError(f"{path}: FSDP needs GPUs (on a CPU accelerate silently runs it as DDP); use "
                         "the ddp profile or a DeepSpeed profile here")
    ds = data.get("deepspeed_config") or {}
    zero = ds.get("zero_stage") if dtype == "DEEPSPEED" else None
    if zero == 3 and not ds.get("zero3_save_16bit_model"):
        raise ValueError(f"{path}: ZeRO-3 without deepspeed_config.zero3_save_16bit_model: true leaves rank 0 "
                         "only a shard of the model to save; set it to true (as the zero3 profile does)")
    mixed = str(data.get("mixed_precision", "no"))
    return LaunchPlan(num_processes=n, distributed_type=dtype if n > 1 else "NO", zero_stage=zero,
                      mixed_precision=mixed, accelerate_config=str(path),
                      accelerate_config_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                      num_machines=int(data.get("num_machines", 1)), machine_rank=int(data.get("machine_rank", 0)))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def is_child() -> bool:
    """True in a rank that a launch started (it must not launch again, nor take the key's lock)."""
    return os.environ.get(CHILD) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def observed() -> dict[str, Any]:
    """What the training process actually ran as (accelerate's state), for the manifest and the tests:
    a launch that silently fell back to one process shows here."""
    from accelerate.state import PartialState

    state = PartialState()
    return {"distributed_type": str(state.distributed_type).split(".")[-1], "num_processes": state.num_processes}


def check_world(num_processes: int) -> None:
    """In a rank: fail at once (not after training) when the trainer did not join the launch's process
    group, e.g. a CPU launch whose trainer was not told to run on the CPU (it then trains N times alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if is_child() and num_processes != world:
        raise RuntimeError(f"rank {rank()}: launched {world} processes but the trainer runs as {num_processes}; "
                           "on a CPU the process group must be joined with cpu=True first (alignment.launch.init_cpu_state)")


def init_cpu_state() -> None:
    """On a CPU, join the launch's process group over gloo before building an `Accelerator` (what
    TrainingArguments(use_cpu=True) does for the TRL trainers): `Accelerator(cpu=True)` would switch
    DeepSpeed off, and without either every rank trains alone (DDP) or accelerate counts one process."""
    if not _cuda():
        from accelerate import PartialState

        PartialState(cpu=True)


def child_progress() -> Callable[[float, dict[str, Any]], None] | None:
    """Rank 0 of a launch reports progress as marked stdout lines the parent turns into updates."""
    if not (is_child() and is_main()):
        return None

    def report(fraction: float, metrics: dict[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        print(PROGRESS + json.dumps({"fraction": fraction, "metrics": shown}), flush=True)

    return report


def watch_parent() -> None:
    """In a rank: exit when the parent that launched it is gone (even after SIGKILL), so no rank is orphaned."""
    parent = int(os.environ.get(PARENT_PID, "0"))
    if not parent:
        return

    def watch() -> None:
        while True:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:  # the whole launch (its own process group) goes: launcher, ranks, workers
                os.killpg(os.getpgrp(), signal.SIGKILL)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def command(launch: LaunchPlan, stage: str, config_file: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch.accelerate_config),
            "--num_processes", str(launch.num_processes), "-m", f"alignment.stages.{stage}",
            "--config", str(config_file)]


def run(launch: LaunchPlan, stage: str, config_file: Path, run_context: dict[str, Any], resolved: dict[str, str],
        log: Callable[[str], None], progress: Callable[[float, dict[str, Any]], None] | None) -> None:
    """Run the stage in `launch.num_processes` processes and wait; raise ``LaunchError`` on failure."""
    env = {**os.environ, CHILD: "1", PARENT_PID: str(os.getpid()), RUN_CONTEXT: json.dumps(run_context),
           RESOLVED: json.dumps(resolved), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command(launch, stage, config_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env, start_new_session=True)
    tail: deque[str] = deque(maxlen=TAIL)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum, frame):  # cancellation: the whole group goes, then the usual handling
        kill_group(proc)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        else:
            raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in previous:
            signal.signal(sig, stop)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):
                if progress is not None:
                    report = json.loads(line[len(PROGRESS):])
                    progress(report["fraction"], report["metrics"])
                continue
            tail.append(line)
            log(line)
        code = proc.wait()
    finally:
        kill_group(proc)
        if in_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code != 0:
        shown = "\n".join(tail)
        raise LaunchError(f"{stage}: `accelerate launch` with {launch.num_processes} processes "
                          f"({launch.distributed_type}, {launch.accelerate_config}) exited with {code}; "
                          f"last lines of its log:\n{shown}")


def kill_group(proc: subprocess.Popen) -> None:
    """Terminate the launch's process group (every rank), then kill what is left after 10 s."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            if not _group_alive(proc.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def as_manifest(launch: LaunchPlan, seen: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's `launch` record: the plan, and what the training process observed."""
    return {**asdict(launch), **(seen or {})}
