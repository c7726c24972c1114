"""The frozen layers below the lowest re-weighted layer, computed once per fixed input and replayed.

Training scales heads in layers >= L only, and the model is frozen, so for the same input ids every layer below L
produces the same output at every step. Validation and the perplexity budget score the same sequences many times
(13 times in a 60-step build); `FrozenPrefix` records what layer L-1 returned on the first pass over a batch and,
on later passes over the same ids, hands that back from every layer below L instead of running them. Layer L then
receives exactly the tensor it received before, so the scores are bit-identical to the plain forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pearzoo.heads import HeadGeometry, decoder_layers


def _clone(output: Any) -> Any:
    # A fresh copy per replay: a layer that updates its input in place must not corrupt the recording.
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_clone(x) for x in output)
    return output


class FrozenPrefix:
    """Replays layers `0..layer-1` for input ids already seen; valid while nothing below `layer` changes.

    Only passes without autograd are recorded or replayed (a replayed tensor carries no graph), and only calls
    that pass `input_ids` by keyword (how pearzoo calls models). `layer` 0 leaves every pass untouched.
    """

    def __init__(self, model: Any, geometry: HeadGeometry, layer: int) -> None:
        self.model = model
        self.layer = layer
        self.layers = decoder_layers(model, geometry) if layer > 0 else None
        self.recorded: dict[tuple, Any] = {}
        self.replayed = 0
        self._key: tuple | None = None

    def _forward(self, index: int, original: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            key = self._key
            if key is not None and key in self.recorded:
                return _clone(self.recorded[key])
            out = original(*args, **kwargs)
            if key is not None and index == self.layer - 1:
                self.recorded[key] = _clone(out)
            return out

        return forward

    @contextmanager
    def active(self) -> Iterator[None]:
        """Record or replay the frozen layers for every model call inside the block."""
        if self.layers is None:
            yield
            return

        def before(module: Any, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids")
            if torch.is_grad_enabled() or not isinstance(ids, torch.Tensor) or args:
                self._key = None
                return
            self._key = (tuple(ids.shape), str(ids.device), ids.detach().cpu().numpy().tobytes())
            if self._key in self.recorded:
                self.replayed += 1

        def after(*_: Any) -> None:
            self._key = None

        handles = [
            self.model.register_forward_pre_hook(before, with_kwargs=True),
            self.model.register_forward_hook(after),
        ]
        patched: list[tuple[Any, Any]] = []
        try:
            for i in range(self.layer):
                module = self.layers[i]
                # An instance-level forward (accelerate's device hooks set one) is wrapped and put back after.
                patched.append((module, module.__dict__.get("forward")))
                module.forward = self._forward(i, module.forward)
            yield
        finally:
            for module, own in patched:
                if own is None:
                    del module.forward
                else:
                    module.forward = own
            for handle in handles:
                handle.remove()
            self._key = None
