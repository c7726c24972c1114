"""Tiny llama GGUF files written with gguf-py, loadable by transformers' GGUF loader.

The output projection (`attn_output`) gets the type under test; every other tensor is F32 except the
feed-forward down projection, which gets a quantized type too, so "other tensors keep their bytes" is
checked on a quantized tensor as well. Q/K are stored as llama.cpp stores them (rows permuted), which is
what transformers' loader un-permutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

VOCAB = 64


def tiny_llama_config(hidden: int, heads: int, head_dim: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=heads // 2, head_dim=head_dim, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, qtype: str, *, hidden: int = 128, heads: int = 4, head_dim: int = 32, seed: int = 0) -> Path:
    """Write a random 2-layer llama as GGUF, `attn_output` (and `ffn_down` where the type fits) in `qtype`."""
    import gguf
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(hidden, heads, head_dim)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    qt = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(64)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else 10000.0)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(1)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        module, _, suffix = name.rpartition(".")
        gname = f"{name_map.get_name(module)}.{suffix}"
        w = tensor.numpy().astype(np.float32)
        if gname.endswith("attn_q.weight"):
            w = _permute(w, heads)
        elif gname.endswith("attn_k.weight"):
            w = _permute(w, config.num_key_value_heads)
        typed = gname.endswith(("attn_output.weight", "ffn_down.weight")) and w.shape[-1] % block == 0
        if typed and qt == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, w)
        elif typed and qt == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        elif typed and _quantizable(qt, block):
            writer.add_tensor(gname, gguf.quantize(w, qt), raw_dtype=qt)
        elif typed:
            # gguf-py cannot quantize this type (K-quants): random blocks with small finite fp16 scales.
            rng = np.random.default_rng(seed)
            raw = rng.integers(0, 256, size=(w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
            raw[..., :4] = np.array([0.01, 0.001], dtype="<f2").view(np.uint8)
            writer.add_tensor(gname, raw.reshape(w.shape[0], -1), raw_dtype=qt)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _quantizable(qt: Any, block: int) -> bool:
    import gguf

    try:
        gguf.quantize(np.zeros((1, block), dtype=np.float32), qt)
    except NotImplementedError:
        return False
    return True


def load_gguf_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
