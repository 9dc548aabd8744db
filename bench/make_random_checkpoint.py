"""make_random_checkpoint.py: writes a random-init Hugging Face Llama checkpoint of a given shape
(default: TinyLlama-1.1B's) for benchmarks, with a real tokenizer from tests/fixtures; with
--experts N a Mixtral one (N experts of --ffn each, --experts-used per token).

    python bench/make_random_checkpoint.py OUT_DIR [--dtype bfloat16] [--layers 22] ...
    python bench/make_random_checkpoint.py OUT_DIR --mixtral     # issue 8's Mixtral-shaped case:
        # hidden 1024, 8 layers, 16/4 heads, 8 experts top-2 of 3584, vocab 32000 (~1.3B, 0.37B active)
"""
from __future__ import annotations

import argparse
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experts", type=int, default=0, help="a Mixtral checkpoint with this many experts")
    p.add_argument("--experts-used", type=int, default=2)
    p.add_argument("--mixtral", action="store_true", help="the benchmark's Mixtral shape (overrides the sizes)")
    a = p.parse_args()
    if a.mixtral:
        a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.experts, a.experts_used = 1024, 8, 16, 4, 3584, 8, 2

    import torch
    import transformers

    common = dict(
        vocab_size=32000, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=a.ctx,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
    )
    if a.experts:
        cfg = transformers.MixtralConfig(**common, num_local_experts=a.experts, num_experts_per_tok=a.experts_used,
                                         sliding_window=None)
    else:
        cfg = transformers.LlamaConfig(**common)
    torch.manual_seed(a.seed)
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, a.dtype))
    model.save_pretrained(a.out)
    tok = os.path.join(HERE, "..", "tests", "fixtures", "tokenizers", "llama2")
    for f in os.listdir(tok):
        shutil.copy(os.path.join(tok, f), a.out)
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {a.dtype}")


if __name__ == "__main__":
    main()
