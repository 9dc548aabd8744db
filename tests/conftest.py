"""conftest.py: shared fixtures. Tiny random-init checkpoints of each supported architecture are
built here with transformers' own config classes (Llama 2 shape, Llama 3 shape, Mistral), saved
as float32 and bfloat16 safetensors next to the real tokenizer files from tests/fixtures. The other
families (Qwen2, Qwen3, Phi-3 with and without LongRoPE, Mixtral with 8 and 4 experts) borrow the
real tokenizer of a model with the same kind of vocabulary: the engine's arithmetic does not
depend on which tokenizer made the ids."""
from __future__ import annotations

import os
import shutil

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TOKENIZERS = os.path.join(FIXTURES, "tokenizers")

# name -> (config class name, kwargs, tokenizer fixture)
ARCHS = {
    "llama2": (
        "LlamaConfig",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        "llama2",
    ),
    "llama3": (
        "LlamaConfig",
        dict(vocab_size=128256, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
             rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=32),
             bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=True),
        "llama3",
    ),
    "mistral": (
        "MistralConfig",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
             sliding_window=24, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        "mistral",
    ),
    "qwen2": (
        "Qwen2Config",
        dict(vocab_size=128256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1000000.0,
             bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=True),
        "llama3",
    ),
    "qwen3": (
        "Qwen3Config",
        dict(vocab_size=128256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
             rope_theta=1000000.0, bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=False),
        "llama3",
    ),
    "phi3": (
        "Phi3Config",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
             sliding_window=48, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        "llama2",
    ),
    # LongRoPE: a prompt past original_max_position_embeddings (64) switches to the long factors
    "phi3-longrope": (
        "Phi3Config",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, original_max_position_embeddings=64,
             rms_norm_eps=1e-5, rope_theta=10000.0,
             rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                                  short_factor=[1.0, 1.02, 1.05, 1.1, 1.3, 1.6, 2.0, 2.9],
                                  long_factor=[1.0, 1.3, 2.1, 3.7, 6.5, 11.0, 19.0, 31.0]),
             bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        "llama2",
    ),
    "mixtral": (
        "MixtralConfig",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
             rms_norm_eps=1e-5, rope_theta=1000000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        "mistral",
    ),
    "mixtral4": (
        "MixtralConfig",
        dict(vocab_size=32000, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
             rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        "mistral",
    ),
}
INIT_RANGE = 0.08  # large enough that next-token distributions are far from flat


def build_checkpoint(arch: str, dtype: str, out_dir: str, seed: int = 0, **overrides) -> str:
    """Random-init HF checkpoint of `arch` saved in `dtype` (float32 or bfloat16) with its tokenizer."""
    import torch
    import transformers

    cls_name, kwargs, tok = ARCHS[arch]
    cfg = getattr(transformers, cls_name)(**{**kwargs, **overrides}, initializer_range=INIT_RANGE)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    for f in os.listdir(os.path.join(TOKENIZERS, tok)):
        shutil.copy(os.path.join(TOKENIZERS, tok, f), out_dir)
    return out_dir


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(arch, dtype) -> folder, built once per session."""
    cache = {}

    def get(arch: str, dtype: str = "float32") -> str:
        key = (arch, dtype)
        if key not in cache:
            cache[key] = build_checkpoint(arch, dtype, str(tmp_path_factory.mktemp(f"{arch}-{dtype}")))
        return cache[key]

    return get


def shipped_model_with_template(dst: str, template: str) -> str:
    """A copy of the shipped model at dst whose tokenizer_config.json has a chat template (the
    shipped model has none)."""
    import json

    import pyllm

    shutil.copytree(pyllm.default_model_path(), dst)
    path = os.path.join(dst, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return dst


def hf_model(path: str):
    """The transformers model for a checkpoint, computing in float32 (bf16 weights upcast exactly),
    which is the arithmetic pyllm does."""
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


@pytest.fixture(scope="session", autouse=True)
def run_outside_source_tree(tmp_path_factory):
    """Subprocesses (CLI, PYLLM_ISA runs) must import the installed pyllm, not the source folder
    beside them (which has no compiled engine): run every test from an empty directory."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)
