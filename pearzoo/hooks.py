"""Runtime head scaling: multiply head slices of the output-projection input by coefficients.

This is the un-folded form of PEAR (spec §3): training uses it with differentiable coefficients,
and tests use it as the reference that a folded model must reproduce.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from pearzoo.heads import HeadGeometry, HeadId, output_projection, unobservable_projection


def _scale_vector(geometry: HeadGeometry, entries: list[tuple[int, Any]], device: torch.device) -> torch.Tensor:
    inner = geometry.num_heads * geometry.head_dim
    parts = []
    taus = {head: tau for head, tau in entries}
    for h in range(geometry.num_heads):
        tau = taus.get(h)
        if tau is None:
            parts.append(torch.ones(geometry.head_dim, device=device))
        else:
            t = tau if isinstance(tau, torch.Tensor) else torch.tensor(float(tau))
            parts.append(t.to(device=device, dtype=torch.float32).reshape(1).expand(geometry.head_dim))
    vec = torch.cat(parts)
    assert vec.numel() == inner
    return vec


@contextmanager
def scale_heads(model: Any, geometry: HeadGeometry, coefficients: Mapping[HeadId, Any]) -> Iterator[None]:
    """Scale each listed head's output by its coefficient for the duration of the block.

    Coefficients may be floats or (differentiable) 0-d float32 tensors. The product is taken in float32
    and cast back to the activation dtype, so coefficients keep their precision in bf16 models.

    Raises:
        InvalidInputError: on leaving the block, if the model ran but never called a scaled layer's output
            projection (the scaling would have silently done nothing).
    """
    by_layer: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for head, tau in coefficients.items():
        geometry.check(head)
        by_layer[head.layer].append((head.head, tau))
    handles = []
    calls = dict.fromkeys(by_layer, 0)
    model_calls = [0]
    try:
        handles.append(model.register_forward_hook(lambda *_: model_calls.__setitem__(0, model_calls[0] + 1)))
        for layer, entries in by_layer.items():
            module = output_projection(model, geometry, layer)

            def pre_hook(mod: Any, args: tuple, entries: list = entries, layer: int = layer) -> tuple:
                calls[layer] += 1
                x = args[0]
                vec = _scale_vector(geometry, entries, x.device)
                return ((x.to(torch.float32) * vec).to(x.dtype), *args[1:])

            handles.append(module.register_forward_pre_hook(pre_hook))
        yield
        skipped = [layer for layer, n in sorted(calls.items()) if n == 0]
        if model_calls[0] and skipped:
            raise unobservable_projection(geometry, skipped[0])
    finally:
        for handle in handles:
            handle.remove()
