"""The `openai` engine: an OpenAI-compatible endpoint, either given (``engine.base_url``) or a managed
``vllm serve`` that this engine starts on 127.0.0.1 and always stops (``close``, context exit, failure).

Scoring uses vLLM's ``prompt_logprobs`` extension of ``/v1/completions``; a plain OpenAI endpoint can
generate but not score. For a given endpoint the key comes from the environment variable named by
``engine.api_key_env`` and is sent only in the Authorization header. A managed server gets a random key
of its own (``VLLM_API_KEY`` in its environment, never on its command line) and is proven ours before
any request carries it: the socket on its port must belong to the process we started or its child
(``alignment.listeners``), and it must refuse a wrong key. The user's key never goes to a local server.
"""

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from alignment.config import EngineSpec, GenerationSpec, ModelSpec
from alignment.config.base import recorded_url
from alignment.generation.base import Chat, Completion, option_ids, prompt_ids
from alignment.generation.vllm_engine import memory_share
from alignment.listeners import not_ours
from alignment.processes import pid_file, start_time


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LIVE: set["ManagedVLLMServer"] = set()


def _stop_all(*_args) -> None:
    for server in list(_LIVE):
        server.stop()


def _on_sigterm(signum, frame) -> None:
    # A cancelled flow run gets SIGTERM: stop our servers (they run in their own session, so nothing else
    # would), then let the previous handler or the default action proceed.
    _stop_all()
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


_PREVIOUS_SIGTERM = None
atexit.register(_stop_all)


GRACE_S = 30.0  # vLLM's own shutdown takes up to 20 s: wait longer before killing


class ManagedVLLMServer:
    """`vllm serve` as a child process on loopback: health-checked start, guaranteed stop (context exit,
    ``close``, interpreter exit, SIGTERM) and, through ``alignment.generation.guard``, death with its owner
    even when the owner is killed with SIGKILL (the guard watches the owner's pid). Its pid file under
    ``$ALIGNMENT_HOME/run`` lets `alignment stop` reap it."""

    def __init__(self, model_path: str, name: str, spec: EngineSpec, dtype: str = "auto"):
        self.model_path, self.name, self.spec, self.dtype = model_path, name, spec, dtype
        self.port = free_port()
        self.key = secrets.token_urlsafe(24)  # this server's own; `--api-key` would show in `ps`
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(self.spec.max_model_len), "--dtype", self.dtype,
               "--gpu-memory-utilization", str(memory_share(self.spec)), "--seed", "0"]
        return cmd + (["--enforce-eager"] if self.spec.enforce_eager in (None, True) else [])

    def start(self) -> "ManagedVLLMServer":
        global _PREVIOUS_SIGTERM
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
            _PREVIOUS_SIGTERM = signal.signal(signal.SIGTERM, _on_sigterm)
        guard = [sys.executable, "-m", "alignment.generation.guard", str(os.getpid()), str(GRACE_S), "--"]
        env = {k: v for k, v in os.environ.items() if k != self.spec.api_key_env}  # the user's key stays here
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(guard + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**env, "VLLM_API_KEY": self.key})
        _LIVE.add(self)
        self.pid_file = pid_file(f"vllm-{self.port}", self.proc.pid)
        deadline = time.time() + self.spec.server_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = self.tail()
                self.stop()
                raise ServerError(f"vllm serve exited with code {self.proc.returncode} while starting; "
                                  f"last lines of {self.log}:\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    self.verify()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ServerError(f"vllm serve did not answer /health within {self.spec.server_timeout_s:.0f} s; "
                          f"see {self.log}:\n{self.tail()}")

    def verify(self) -> None:
        """The listener on our port is the server we started (or its child) and it refuses a wrong key;
        else the server is stopped and the start fails, before our key was sent anywhere."""
        why = not_ours(self.port, self.proc.pid, start_time(self.proc.pid))
        if why is None:
            wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}
            status = httpx.get(f"{self.base_url}/models", headers=wrong, timeout=10).status_code
            why = None if status == 401 else f"it answered a wrong key with HTTP {status} instead of 401"
        if why is not None:
            self.stop()
            raise ServerError(f"127.0.0.1:{self.port} is not the vllm serve this run started ({why}); nothing was sent "
                              "to it. Another process took the port: run again (a new port is chosen)")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        _LIVE.discard(self)
        if getattr(self, "pid_file", None) is not None:
            self.pid_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the guard stops the server, then the group
            self.proc.wait(timeout=GRACE_S + 10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def __enter__(self) -> "ManagedVLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class OpenAIEngine:
    name = "openai"

    def __init__(self, base_url: str, model_name: str, tokenizer, spec: EngineSpec,
                 server: ManagedVLLMServer | None = None):
        self.base_url, self.model_name, self.tokenizer, self.server = base_url.rstrip("/"), model_name, tokenizer, server
        key = server.key if server is not None else os.environ.get(spec.api_key_env, "")
        self.client = httpx.Client(timeout=600, headers={"Authorization": f"Bearer {key}"} if key else {})

    @classmethod
    def load(cls, model: ModelSpec, spec: EngineSpec) -> "OpenAIEngine":
        from alignment.models import load_tokenizer, resolve_model_path

        tok = load_tokenizer(model)
        if spec.base_url:
            return cls(spec.base_url, model.name, tok, spec)
        dtype = model.dtype if model.dtype != "auto" else ("auto" if _cuda() else "float32")
        server = ManagedVLLMServer(resolve_model_path(model), "policy", spec, dtype).start()
        try:
            return cls(server.base_url, "policy", tok, spec, server)
        except Exception:
            server.stop()
            raise

    def _post(self, path: str, body: dict) -> dict:
        r = self.client.post(f"{self.base_url}{path}", json=body)
        if r.status_code != 200:
            raise ServerError(f"{recorded_url(self.base_url + path)} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def generate(self, chats: list[Chat], spec: GenerationSpec, logprobs: bool = False) -> list[Completion]:
        out = []
        for chat in chats:  # the server batches concurrent requests; sequential keeps the seed meaning simple
            res = self._post("/chat/completions", {
                "model": self.model_name, "messages": chat, "max_tokens": spec.max_new_tokens,
                "temperature": spec.temperature, "top_p": spec.top_p, "seed": spec.seed, "logprobs": logprobs})
            choice = res["choices"][0]
            text = (choice["message"]["content"] or "").strip()
            lps = [t["logprob"] for t in choice["logprobs"]["content"]] if logprobs and choice.get("logprobs") else None
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the API returns text only
            out.append(Completion(text=text, token_ids=ids, logprobs=lps))
        return out

    def score(self, chats: list[Chat], options: list[list[str]]) -> list[list[float]]:
        out: list[list[float]] = []
        for chat, opts in zip(chats, options, strict=True):
            p = prompt_ids(self.tokenizer, chat)
            row = []
            for opt in opts:
                o = option_ids(self.tokenizer, opt)
                res = self._post("/completions", {"model": self.model_name, "prompt": p + o, "max_tokens": 1,
                                                  "prompt_logprobs": 0, "temperature": 0})
                pl = res["choices"][0].get("prompt_logprobs")
                if pl is None:
                    raise ServerError(f"{recorded_url(self.base_url)} returned no prompt_logprobs; scoring needs a vLLM server")
                row.append(sum(pl[len(p) + k][str(t)]["logprob"] for k, t in enumerate(o)))
            out.append(row)
        return out

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
