"""The clean prefix's cache while locate recomputes the read-out position (spec §2.3).

Every ablation row of a configuration attends to the same clean prefix of its sample. Two ways to give it that:

- `shared_mode` + `shared_cache`: the cache hands each layer's new key and value to `shared_attention` (registered in
  transformers' attention interface) with the prefix untouched; the rows of a sample share one read of its prefix.
  Works for models whose attention goes through that interface; `locate` checks it on the clean run.
- `TiledCache`: the prefix copied once per row, for models whose attention does not.
"""

from __future__ import annotations

import contextvars
import copy
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _slot_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A prefix tiled once per configuration, plus one slot that each single-token run overwrites.

        Replaces DynamicLayer's concatenation (a full copy of the prefix per run) with an in-place write.
        """

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: int) -> None:
            super().__init__()
            self.keys, self.values = keys, values
            self.is_initialized = True
            self.device = keys.device
            self.position = position

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
            self.keys[:, :, self.position : self.position + 1] = key_states
            self.values[:, :, self.position : self.position + 1] = value_states
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.position

    return SlotLayer


class TiledCache:
    """The clean prefix cache tiled to `rows` rows (row r = sample r mod N), built once per configuration.

    Only for models whose attention does not go through transformers' attention interface (see `shared_attention`).
    """

    def __init__(self, prefix_cache: Any, samples: int, rows: int, position: int) -> None:
        from transformers.cache_utils import DynamicLayer

        self.prefix = prefix_cache
        self.position = position
        self.rows = rows
        self.buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        reps = rows // samples
        for layer in prefix_cache.layers:
            if type(layer) is DynamicLayer and layer.keys is not None and layer.keys.ndim == 4:
                k = layer.keys.repeat(reps, 1, 1, 1)
                v = layer.values.repeat(reps, 1, 1, 1)
                pad_k = k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3])
                pad_v = v.new_zeros(v.shape[0], v.shape[1], 1, v.shape[3])
                self.buffers.append((torch.cat([k, pad_k], 2), torch.cat([v, pad_v], 2)))
            else:
                self.buffers.append(None)

    def for_run(self, rows: int) -> Any:
        slot = _slot_layer_class()
        run = copy.copy(self.prefix)
        layers = []
        for layer, buf in zip(self.prefix.layers, self.buffers):
            if buf is not None:
                layers.append(slot(buf[0][:rows], buf[1][:rows], self.position))
            else:
                # Other cache layer types (sliding windows...) take the general path: tile and let them append.
                new = copy.copy(layer)
                reps = rows // layer.keys.shape[0]
                new.keys = layer.keys.repeat(reps, *([1] * (layer.keys.ndim - 1)))
                new.values = layer.values.repeat(reps, *([1] * (layer.values.ndim - 1)))
                layers.append(new)
        run.layers = layers
        return run


def joinable(layer: Any) -> bool:
    """Whether a cache layer's per-sample state is its keys and values alone (so chunks join along the batch)."""
    for name, value in vars(layer).items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and name not in ("keys", "values"):
            return False
    return isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.ndim == 4


def cache_bytes_per_row(prefix_cache: Any) -> int:
    total = 0
    for layer in prefix_cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            per = layer.keys[:1].numel() * layer.keys.element_size()
            total += 2 * per * (layer.keys.shape[-2] + 1) // max(1, layer.keys.shape[-2])
    return total


_SHARED = "pearzoo_shared_prefix"  # the name registered in transformers' attention (and mask) interface


class SharedPrefixError(Exception):
    """The model's attention did not take the shared-prefix path as expected (internal; the tiled cache is used)."""


class SharedState:
    """What one cache layer's update hands to the attention call that follows it."""

    def __init__(self) -> None:
        self.pending: tuple[torch.Tensor, ...] | None = None
        self.calls = 0
        self.unconsumed = 0


_STATE: contextvars.ContextVar[SharedState | None] = contextvars.ContextVar("pearzoo_shared_prefix", default=None)


@functools.cache
def _shared_layer_class(base: type) -> type:
    def update(self: Any, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
        state = _STATE.get()
        if state is None:
            raise SharedPrefixError("shared-prefix cache used outside pearzoo's locate")
        if state.pending is not None:
            state.unconsumed += 1
        # The prefix stays as stored (batch N); the new key and value (batch G*N) go to the attention call as they are.
        state.pending = (key_states, value_states, self.keys, self.values)
        return key_states, value_states

    return type(f"SharedPrefix{base.__name__}", (base,), {"update": update})


def shared_cache(prefix_cache: Any) -> Any:
    """A view of the clean prefix cache whose layers leave the prefix untiled (see `shared_attention`)."""
    run = copy.copy(prefix_cache)
    layers = []
    for layer in prefix_cache.layers:
        new = copy.copy(layer)
        new.__class__ = _shared_layer_class(type(layer))
        layers.append(new)
    run.layers = layers
    return run


def shared_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over [clean prefix of its sample, itself], eager semantics.

    query [G*N, H, 1, d] (row i*N + s: sample s), key/value [G*N, KV, 1, d] from the cache layer's update, and that
    layer's prefix [N, KV, P, d]. The G rows of a sample share its prefix, so the prefix scores are one batched
    matmul per sample with G*H/KV query rows, and the prefix is never copied.
    """
    state = _STATE.get()
    pending = state.pending if state is not None else None
    if pending is None or key is not pending[0] or value is not pending[1]:
        raise SharedPrefixError("attention inputs did not come from the shared-prefix cache")
    state.pending = None
    state.calls += 1
    if dropout or query.shape[2] != 1 or kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise SharedPrefixError("unsupported attention option")
    prefix_k, prefix_v = pending[2], pending[3]
    rows, heads, _, dim = query.shape
    samples, kv_heads, prefix, _ = prefix_k.shape
    if rows % samples or heads % kv_heads:
        raise SharedPrefixError("row or head counts do not match the prefix")
    groups, rep = rows // samples, heads // kv_heads
    q = query.reshape(groups, samples, kv_heads, rep, dim)
    q_shared = q.permute(1, 2, 0, 3, 4).reshape(samples, kv_heads, groups * rep, dim)
    scores_prefix = torch.matmul(q_shared, prefix_k.transpose(-1, -2))  # [N, KV, G*rep, P]
    scores_self = (q * key.reshape(groups, samples, kv_heads, 1, dim)).sum(-1)  # [G, N, KV, rep]
    scores_self = scores_self.permute(1, 2, 0, 3).reshape(samples, kv_heads, groups * rep, 1)
    scores = torch.cat([scores_prefix, scores_self], -1) * (scaling if scaling is not None else dim**-0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask
        if mask.ndim != 4 or mask.shape[0] not in (1, rows) or tuple(mask.shape[1:]) != (1, 1, prefix + 1):
            raise SharedPrefixError(f"unsupported attention mask shape {tuple(mask.shape)}")
        mask = mask[:samples] if mask.shape[0] == rows else mask  # rows of one sample share its mask (no padding)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)
    vdim = value.shape[-1]
    out = torch.matmul(probs[..., :prefix], prefix_v).view(samples, kv_heads, groups, rep, vdim)
    own = value.reshape(groups, samples, kv_heads, 1, vdim).permute(1, 2, 0, 3, 4)
    out = out + probs[..., prefix:].reshape(samples, kv_heads, groups, rep, 1) * own
    return out.permute(2, 0, 1, 3, 4).reshape(rows, 1, heads, vdim), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_SHARED, shared_attention)
    AttentionMaskInterface.register(_SHARED, sdpa_mask)


@contextmanager
def shared_mode(attentions: Sequence[nn.Module]) -> Iterator[SharedState]:
    """Route the given attention modules through `shared_attention` (and `shared_cache`'s layers) for one step.

    Raises `SharedPrefixError` when the modules carry no transformers config to switch.
    """
    configs = {id(c): c for c in (getattr(a, "config", None) for a in attentions) if c is not None}
    if not configs or not all(hasattr(c, "_attn_implementation_internal") for c in configs.values()):
        raise SharedPrefixError("attention modules carry no transformers config")
    _register()
    saved = [(c, c._attn_implementation_internal) for c in configs.values()]
    state = SharedState()
    token = _STATE.set(state)
    try:
        for c, _ in saved:
            # As `PreTrainedModel.set_attn_implementation` does: the internal attribute, not the recursive setter.
            c._attn_implementation_internal = _SHARED
        yield state
    finally:
        for c, value in saved:
            c._attn_implementation_internal = value
        _STATE.reset(token)
