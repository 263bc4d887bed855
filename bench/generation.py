"""The same prompts through each generation engine in one run: tokens/s each and the ratio to `hf`.

    python bench/generation.py                                  # default model, vllm vs hf, 64 prompts
    python bench/generation.py --engines hf,hf-static --model DIR --batch 128    # on a GPU

Greedy decoding, ``--new`` tokens at most per prompt; throughput counts generated tokens (up to EOS)
over the generate call, with the model already loaded (load time is its own field). One JSON line per
engine; the first engine is the baseline of ``ratio``. Engines: `hf` (transformers generate), `hf-static`
(the same with a static KV cache, compiled; a warm-up call is made and timed apart), `vllm`.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path


def prompts(n: int) -> list[list[dict[str, str]]]:
    from alignment.config import DataSpec
    from alignment.data import load_data

    rows = []
    for name in ("eval_prompts", "redteam_prompts", "benign_prompts"):
        rows += load_data(DataSpec(path=f"data/{name}.jsonl"), "prompts").rows
    return [rows[i % len(rows)]["prompt"] for i in range(n)]


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} {os.cpu_count()} cores (CPU)"


def run_engine(kind: str, model, chats, spec, args) -> dict:
    from alignment.config import EngineKind, EngineSpec
    from alignment.generation import load_engine

    engine_spec = EngineSpec(kind=EngineKind.vllm if kind == "vllm" else EngineKind.hf,
                             static_cache="on" if kind == "hf-static" else "off",
                             gpu_memory_utilization=args.vllm_mem, max_model_len=1024)
    t0 = time.perf_counter()
    engine = load_engine(model, engine_spec)
    load_s = time.perf_counter() - t0
    # Warm-up, timed apart: static-cache compilation happens on the first full-shape call (users pay it
    # once per shape); the others get a 4-token call (CUDA context, kernels), as the plain anchor does.
    t0 = time.perf_counter()
    engine.generate(chats[: spec.batch_size],
                    spec if kind == "hf-static" else spec.model_copy(update={"max_new_tokens": 4}))
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = engine.generate(chats, spec)
    secs = time.perf_counter() - t0
    engine.close()
    tokens = sum(o.n_tokens for o in outs)
    return {"engine": kind, "prompts": len(chats), "batch": spec.batch_size, "new_tokens_max": spec.max_new_tokens,
            "generated_tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1),
            "load_s": round(load_s, 2), "warmup_s": round(warm_s, 2),
            "first_text": outs[0].text[:80]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="hf,vllm")
    p.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, model dir or hub id")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--vllm-mem", type=float, default=None, help="vLLM memory share (CPU: of system memory); "
                   "unset: the engine's default")
    p.add_argument("--random-shape", choices=["135m", "1.7b", "tiny"],
                   help="build a random-weight SmolLM2-shaped model (throughput does not depend on weights)")
    p.add_argument("--tok", help="tokenizer dir for --random-shape (e.g. ../shared/bench/tok)")
    args = p.parse_args()
    os.environ.setdefault("ALIGNMENT_HOME", str(Path(".alignment").resolve()))
    from alignment.config import GenerationSpec, ModelSpec

    if args.random_shape:
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).parent))
        from gpu_stages import build_model

        args.model = str(build_model(args.tok, Path(tempfile.mkdtemp()) / args.random_shape, args.random_shape))
    model = ModelSpec(name=args.model)
    chats = prompts(args.prompts)
    spec = GenerationSpec(max_new_tokens=args.new, batch_size=args.batch)
    base = None
    for kind in args.engines.split(","):
        rec = run_engine(kind, model, chats, spec, args)
        base = base or rec["tokens_per_s"]
        rec.update({"bench": "generation", "model": args.model, "machine": machine(),
                    "ratio_to_first": round(rec["tokens_per_s"] / base, 2)})
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
