"""Tiny random models, one or more per recipe model_type, for the architecture conformance tests.

Each entry builds a `*ForCausalLM` from a transformers config small enough that the whole matrix in
`tests/test_architectures.py` runs in well under a minute on two CPU cores: 2-3 layers, width 32-64,
4 query heads, a 128-token vocabulary. Where the architecture allows it the config is made awkward on
purpose, because that is where geometry bugs hide:

- head_dim != hidden_size / num_heads (Llama, Mistral, Qwen2/3, Gemma, Phi-3, StarCoder2), spec §4;
- GQA or MQA (num_key_value_heads < num_heads), so heads are query heads;
- a bias on the output projection where the architecture has one (OPT, GPT-2, BLOOM, GPT-NeoX,
  GPT-Neo, StarCoder2, Falcon with `bias=True`), which the fold must leave alone;
- sliding-window / local attention shorter than the test sequences (Mistral, Gemma 2/3, GPT-Neo).

Adding an architecture: add its recipe under `recipes/`, then one `_CONFIGS` entry here keyed by its
model_type (several variants if a config flag changes the attention code, as Falcon's `alibi` does).
`tests/test_architectures.py` fails for any recipe model_type without an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig

from pearzoo.probe import redraw_weights
from pearzoo.recipe.catalog import recipe_for_config
from pearzoo.recipe.schema import Recipe

VOCAB = 128
NUM_HEADS = 4
SEED = 0


def _llama() -> PreTrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip


def _mistral() -> PreTrainedConfig:
    from transformers import MistralConfig

    # sliding_window 8 < the 12-token locate sequences, so the sliding cache path is exercised.
    return MistralConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        sliding_window=8, tie_word_embeddings=False,
    )  # fmt: skip


def _qwen2() -> PreTrainedConfig:
    from transformers import Qwen2Config

    # Qwen2Config declares no head_dim, but Qwen2Attention reads getattr(config, "head_dim", ...).
    return Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip


def _qwen3() -> PreTrainedConfig:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip


def _gemma() -> PreTrainedConfig:
    from transformers import GemmaConfig

    # MQA, as Gemma-2B has.
    return GemmaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip


def _gemma2() -> PreTrainedConfig:
    from transformers import Gemma2Config

    # Alternating sliding/full layers, logit soft-capping (locate takes its non-linear read-out path).
    return Gemma2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        sliding_window=8, query_pre_attn_scalar=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip


def _gemma3_text() -> PreTrainedConfig:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        sliding_window=8, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip


def _phi3() -> PreTrainedConfig:
    from transformers import Phi3Config

    # Phi3Config declares no head_dim, but Phi3Attention reads getattr(config, "head_dim", ...).
    return Phi3Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip


def _starcoder2() -> PreTrainedConfig:
    from transformers import Starcoder2Config

    return Starcoder2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        use_bias=True, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


def _gpt_neox() -> PreTrainedConfig:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=NUM_HEADS, max_position_embeddings=64, attention_bias=True,
    )  # fmt: skip


def _bloom() -> PreTrainedConfig:
    from transformers import BloomConfig

    return BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=NUM_HEADS)


def _bloom_tp_slow_exact() -> PreTrainedConfig:
    from transformers import BloomConfig

    # pretraining_tp > 1 with slow_but_exact: BloomAttention then calls F.linear on slices of dense.weight
    # instead of calling `dense`, so hooks on the output projection never fire (a real config path).
    return BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=NUM_HEADS, pretraining_tp=2, slow_but_exact=True)


def _mpt() -> PreTrainedConfig:
    from transformers import MptConfig

    return MptConfig(vocab_size=VOCAB, d_model=32, n_heads=NUM_HEADS, n_layers=3, max_seq_len=64, expansion_ratio=2)


def _falcon_rope() -> PreTrainedConfig:
    from transformers import FalconConfig

    # Falcon-7B style: rotary, multi-query, parallel attention/MLP; bias on as in Falcon-RW.
    return FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=NUM_HEADS,
        alibi=False, multi_query=True, parallel_attn=True, bias=True, max_position_embeddings=64,
    )  # fmt: skip


def _falcon_alibi() -> PreTrainedConfig:
    from transformers import FalconConfig

    # Falcon-RW style: ALiBi, full multi-head, sequential attention then MLP, biased linears.
    return FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=NUM_HEADS,
        alibi=True, multi_query=False, parallel_attn=False, bias=True, max_position_embeddings=64,
    )  # fmt: skip


def _falcon_new_decoder() -> PreTrainedConfig:
    from transformers import FalconConfig

    # Falcon-40B style: new decoder architecture with grouped KV heads.
    return FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=NUM_HEADS, num_kv_heads=2,
        new_decoder_architecture=True, alibi=False, bias=False, max_position_embeddings=64,
    )  # fmt: skip


def _gpt2() -> PreTrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=NUM_HEADS, n_positions=64, bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )  # fmt: skip


def _opt() -> PreTrainedConfig:
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=NUM_HEADS,
        max_position_embeddings=64, word_embed_proj_dim=32, enable_bias=True, pad_token_id=1,
    )  # fmt: skip


def _opt_350m() -> PreTrainedConfig:
    from transformers import OPTConfig

    # OPT-350m style: post-LN and an embedding projection (project_in/project_out) around the decoder.
    return OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=NUM_HEADS,
        max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=False, enable_bias=True,
        pad_token_id=1,
    )  # fmt: skip


def _gpt_neo() -> PreTrainedConfig:
    from transformers import GPTNeoConfig

    # Global and local layers; window 4 is shorter than the test sequences.
    return GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=3, num_heads=NUM_HEADS, max_position_embeddings=64,
        attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=4, intermediate_size=64,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )  # fmt: skip


def _scaffolded(model_type: str) -> Callable[[], PreTrainedConfig]:
    """The config `pearzoo recipes scaffold` probes: the config class's defaults shrunk by pearzoo.probe
    (3 layers, 4 query heads over 2 KV heads, hidden 48 with head_dim 16 where the config has a head_dim key,
    MLA with v_head_dim 12 != qk 16, 4 experts, vocabulary 128), nested text configs shrunk the same way."""
    from pearzoo.probe import tiny_config as scaffold_config

    return lambda: scaffold_config(model_type)


# Architectures whose recipes were written by `pearzoo recipes scaffold` and reviewed against their modeling
# code; their tiny models are the scaffold's own (one variant, "tiny"). The awkward cases are in the defaults:
# GPT-OSS has attention sinks, DeepSeek-V2/V3, GLM-4-MoE-Lite, MiniCPM3, Youtu and Sarvam-MLA use MLA
# (o_proj input = heads x v_head_dim), Gemma 3 and Llama 4 nest the decoder, Cohere runs attention and MLP in
# parallel, the MoE models route through experts (untouched by the fold).
SCAFFOLDED = [
    "apertus", "arcee", "aria_text", "biogpt", "codegen", "cohere", "cohere2", "cohere2_moe", "cwm",
    "deepseek_v2", "deepseek_v3", "doge", "ernie4_5", "ernie4_5_moe", "exaone", "exaone4", "exaone_moe",
    "flex_olmo", "gemma3", "glm", "glm4", "glm4_moe", "glm4_moe_lite", "gpt_bigcode", "gpt_oss", "gptj",
    "granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "helium", "hunyuan_v1_dense",
    "hunyuan_v1_moe", "hyperclovax", "internlm3", "jais2", "llama4", "llama4_text", "mellum", "mimo_v2_flash",
    "minicpm3", "minicpm5_moe", "minimax_m2", "ministral", "ministral3", "mixtral", "nanochat", "nemotron", "olmo",
    "olmo2", "olmo3", "olmoe", "param2moe", "persimmon", "phi", "phimoe", "qwen2_moe", "qwen3_moe", "sarvam_mla",
    "sarvam_moe", "seed_oss", "smollm3", "solar_open", "stablelm", "vaultgemma", "youtu",
]  # fmt: skip


# model_type -> variant name -> config factory. The first variant is the default.
_CONFIGS: dict[str, dict[str, Callable[[], PreTrainedConfig]]] = {
    "llama": {"gqa": _llama},
    "mistral": {"sliding": _mistral},
    "qwen2": {"gqa": _qwen2},
    "qwen3": {"gqa": _qwen3},
    "gemma": {"mqa": _gemma},
    "gemma2": {"softcap": _gemma2},
    "gemma3_text": {"sliding": _gemma3_text},
    "phi3": {"gqa": _phi3},
    "starcoder2": {"bias": _starcoder2},
    "gpt_neox": {"bias": _gpt_neox},
    "bloom": {"bias": _bloom, "tp_slow_exact": _bloom_tp_slow_exact},
    "mpt": {"alibi": _mpt},
    "falcon": {"rope": _falcon_rope, "alibi": _falcon_alibi, "new_decoder": _falcon_new_decoder},
    "gpt2": {"conv1d": _gpt2},
    "opt": {"bias": _opt, "350m": _opt_350m},
    "gpt_neo": {"local": _gpt_neo},
} | {model_type: {"tiny": _scaffolded(model_type)} for model_type in SCAFFOLDED}


def variants(model_type: str) -> list[str]:
    """The tiny-model variants for `model_type` (empty if there is no entry)."""
    return list(_CONFIGS.get(model_type, {}))


def tiny_config(model_type: str, variant: str | None = None) -> PreTrainedConfig:
    """The transformers config of a tiny model.

    Raises:
        KeyError: no tiny model for `model_type` (add one to `_CONFIGS`), or an unknown variant.
    """
    table = _CONFIGS[model_type]
    factory = table[variant] if variant is not None else next(iter(table.values()))
    config = factory()
    assert config.model_type == model_type, (config.model_type, model_type)
    return config


def tiny_model(model_type: str, variant: str | None = None) -> tuple[Any, Recipe]:
    """A tiny random `*ForCausalLM` (float32, eval mode, seeded) and the recipe that covers it.

    Raises:
        KeyError: no tiny model for `model_type`.
        UnsupportedArchitectureError: no recipe covers it.
    """
    config = tiny_config(model_type, variant)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    # Each head then moves the read-out metric by 1e-3 or more, and a bias the fold wrongly scales shows up.
    redraw_weights(model)
    recipe, _ = recipe_for_config(model.config)
    return model, recipe
