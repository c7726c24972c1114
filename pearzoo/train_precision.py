"""The arithmetic of training and its checks: a recipe's `train.precision`.

`float32` (the default) runs the model as loaded. `bfloat16` runs the same passes under `torch.autocast` with
bfloat16: matrix products take bfloat16 inputs and accumulate in float32, the weights and the residual stream stay
as loaded, and the coefficients stay float32 (spec §3: they are the only trained values, and their optimizer steps
are float32). On a CPU with AVX512-BF16 a matrix product runs about 2x faster than in float32, a training step or
check about 1.6x (bench/build.py). Locate and the manifest's held-out metrics keep the model's own arithmetic.

Attention is the exception: PyTorch's CPU flash attention backward is about 3x slower in bfloat16 than in float32
here (so slow it ate most of the gain), so while the context is active a model that uses `sdpa` gets the same
kernel fed float32 queries, keys and values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_SDPA_FLOAT32 = "pearzoo_sdpa_float32"


def _sdpa_float32(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), *args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    if _SDPA_FLOAT32 not in AttentionInterface._global_mapping:
        AttentionInterface.register(_SDPA_FLOAT32, _sdpa_float32)


def _configs(model: Any) -> list[Any]:
    # Every config object an attention module may read (a multimodal model's text config is another object).
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
            seen.setdefault(id(config), config)
    return list(seen.values())


@contextmanager
def precision(model: Any, name: str) -> Iterator[None]:
    """Run the model passes inside the block with the arithmetic `name` (`float32` or `bfloat16`).

    Backward passes of graphs built inside the block follow the dtypes of their forward pass, so they may run
    outside it. `float32` changes nothing.
    """
    if name == "float32":
        yield
        return
    if name != "bfloat16":
        raise ValueError(f"unknown train.precision {name!r}")
    device = next(model.parameters()).device.type
    _register()
    configs = _configs(model)
    # The internal field, where there is one: the public setter also rewrites every sub-config, whose own
    # implementation may differ (each config in use is in `configs` anyway).
    field = "_attn_implementation_internal"
    try:
        for config in configs:
            setattr(config, field if hasattr(config, field) else "_attn_implementation", _SDPA_FLOAT32)
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    finally:
        for config in configs:
            setattr(config, field if hasattr(config, field) else "_attn_implementation", "sdpa")
