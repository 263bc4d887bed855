"""Our SFT and DPO stages vs plain TRL on the same GPU, same model, data and settings, in one process.

    python bench/gpu_stages.py --tok DIR [--epochs 3]

A SmolLM2-135M-shaped model with random weights (throughput does not depend on weight values) and the
SmolLM2 tokenizer from --tok. On a GPU, `adapter.mode: auto` means full fine-tuning in bf16 and DPO keeps
a frozen reference copy. Prints one JSON line per measurement; ``ratio`` is our train time over plain
TRL's (1.0 = no overhead in the training loop); ``stage_wall_s`` adds loading, validation, keying and
saving the merged model, which plain TRL does not do (held-out answers are the respond stage's job).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # what `dtype: auto` picks


SHAPES = {"135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3),
          "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                       num_key_value_heads=32),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)}


def build_model(tok_dir: str, out: Path, shape: str) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        tok.pad_token = "<|endoftext|>"
    cfg = LlamaConfig(vocab_size=len(tok), **SHAPES[shape], tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def plain_sft(model_dir: Path, rows: list[dict], kwargs: dict) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE)
    t = SFTTrainer(model=model, args=SFTConfig(**kwargs), train_dataset=Dataset.from_list(rows), processing_class=tok)
    return t.train().metrics["train_runtime"]


def plain_dpo(model_dir: Path, rows: list[dict], kwargs: dict, beta: float) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE)
    t = DPOTrainer(model=model, ref_model=ref, args=DPOConfig(**kwargs, beta=beta),
                   train_dataset=Dataset.from_list(rows), processing_class=tok)
    return t.train().metrics["train_runtime"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tok", required=True)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--shape", choices=sorted(SHAPES), default="135m", help="tiny: a CPU smoke run of this script")
    args = p.parse_args()
    os.environ.setdefault("ALIGNMENT_HOME", tempfile.mkdtemp())
    from alignment.config import DataSpec, DPOStageConfig, ModelSpec, SFTStageConfig, TrainSpec
    from alignment.data import load_data
    from alignment.stages import dpo, sft
    from alignment.stages.sft import to_prompt_completion
    from alignment.training import trainer_kwargs

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    model_dir = build_model(args.tok, Path(tempfile.mkdtemp()) / f"smollm2-{args.shape}-random", args.shape)
    train = TrainSpec(learning_rate=1e-5, epochs=args.epochs, batch_size=8, max_length=192, logging_steps=5)
    scratch = Path(tempfile.mkdtemp())

    sft_rows = [to_prompt_completion(r) for r in load_data(DataSpec(path="data/sft_train.jsonl"), "sft").rows]
    kw = {**trainer_kwargs(train, scratch, len(sft_rows), "plain-sft"), "save_strategy": "no"}  # TRL: no saves this short
    plain_sft(model_dir, sft_rows, {**kw, "max_steps": 10})  # warm-up (CUDA context, kernels): not counted
    plain = [plain_sft(model_dir, sft_rows, kw)]
    full = {"mode": "full"}  # plain TRL below fine-tunes fully; on a GPU `auto` means the same
    cfg = SFTStageConfig(model=ModelSpec(name=str(model_dir)), data=DataSpec(path="data/sft_train.jsonl"),
                         options=dict(train=train, adapter=full))
    t0 = time.perf_counter()
    ours = sft.run(cfg)
    wall = time.perf_counter() - t0
    plain.append(plain_sft(model_dir, sft_rows, kw))
    emit({"bench": "gpu_stages.sft", "device": device, "rows": len(sft_rows), "epochs": args.epochs,
          "mode": ours.metrics["adapter_mode"], "ours_train_s": ours.metrics["train_seconds"],
          "plain_trl_train_s": plain, "ratio": round(ours.metrics["train_seconds"] / (sum(plain) / 2), 3),
          "stage_wall_s": round(wall, 2), "loss_first": ours.metrics["loss_first"],
          "loss_last": ours.metrics["loss_last"]})

    pref = load_data(DataSpec(path="data/pref_train.jsonl"), "preference").rows
    kw = {**trainer_kwargs(train, scratch, len(pref), "plain-dpo"), "save_strategy": "no"}
    plain_dpo(model_dir, pref, {**kw, "max_steps": 10}, 0.1)  # warm-up, not counted
    plain = [plain_dpo(model_dir, pref, kw, 0.1)]
    cfg = DPOStageConfig(model=ModelSpec(name=ours.path), data=DataSpec(path="data/pref_train.jsonl"),
                         eval_data=DataSpec(path="data/pref_heldout.jsonl"), options=dict(train=train, adapter=full))
    t0 = time.perf_counter()
    ours_dpo = dpo.run(cfg)
    wall = time.perf_counter() - t0
    plain.append(plain_dpo(model_dir, pref, kw, 0.1))
    m = ours_dpo.metrics
    emit({"bench": "gpu_stages.dpo", "device": device, "pairs": len(pref), "epochs": args.epochs,
          "mode": m["adapter_mode"], "ours_train_s": m["train_seconds"], "plain_trl_train_s": plain,
          "ratio": round(m["train_seconds"] / (sum(plain) / 2), 3), "stage_wall_s": round(wall, 2),
          "heldout_rewards_accuracies": m["heldout_rewards_accuracies"]})

    lora = sft.run(SFTStageConfig(model=ModelSpec(name=str(model_dir)), data=DataSpec(path="data/sft_train.jsonl"),
                                  options=dict(train=train.model_copy(update={"learning_rate": 2e-4}),
                                               adapter={"mode": "lora"})))
    emit({"bench": "gpu_stages.sft_lora", "device": device, "mode": lora.metrics["adapter_mode"],
          "train_s": lora.metrics["train_seconds"], "loss_first": lora.metrics["loss_first"],
          "loss_last": lora.metrics["loss_last"]})


if __name__ == "__main__":
    main()
