"""Random-weights Llama checkpoints of published shapes, for the GPU benchmarks (locate and train cost the same
whatever the weights are; inference too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "zoo" / "tokenizer"  # 8192 ids: enough for the perplexity budget's text, and < every vocab here

_COMMON = {"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
SHAPES = {
    # TinyLlama-1.1B: 22 layers x 32 query heads (GQA, 4 KV heads).
    "llama-1b": {**_COMMON, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000},
    # Llama-2-7B: 32 layers x 32 heads (MHA).
    "llama-7b": {**_COMMON, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    # Llama-2-13B: 40 layers x 40 heads (MHA).
    "llama-13b": {**_COMMON, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000},
    # A smoke-test shape (CPU): 2 layers of the 1B widths.
    "llama-tiny": {**_COMMON, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                   "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8192},
}


def write_random_model(shape: str, directory: Path, dtype: str = "bfloat16", device: str = "cpu", seed: int = 0) -> Path:
    """A LlamaForCausalLM of `shape` with transformers' seeded init, saved as safetensors with the zoo tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], dtype=dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory, max_shard_size="5GB")
    del model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, directory / name)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return directory
