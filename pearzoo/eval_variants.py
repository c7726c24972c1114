"""Score every variant of an eval (base, patched, the control's draws) batch by batch, sharing what they share.

A variant scales heads in layers >= its lowest scaled layer L only, so below L it computes exactly what the
base model computes on the same input ids. Each batch is therefore scored by the base model first, which
records what layer L - 1 returned for every L a variant starts at (`pearzoo.replay.FrozenPrefix`, one per
distinct L, nested); each variant then replays that tensor instead of running layers 0..L-1. Layer L receives
the tensor it would have computed, so every score is bit-identical to scoring the variant on its own (tested).
Recordings are dropped after each batch, so memory stays at one batch's hidden states per distinct L.

What this saves is the share of layers below each variant's lowest head: on SmolLM2-135M with its registry
manifest (lowest head in layer 2) and the five default control draws (lowest layers 2, 1, 2, 1, 9), 17 of the
180 layer passes of the six non-base variants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from pearzoo.heads import HeadGeometry, HeadId
from pearzoo.hooks import scale_heads
from pearzoo.replay import FrozenPrefix

Variants = dict[str, "dict[HeadId, float] | None"]


def _lowest(coeffs: dict[HeadId, float]) -> int:
    return min(h.layer for h in coeffs)


def score_variants(
    model: Any,
    geometry: HeadGeometry | None,
    variants: Variants,
    batches: Sequence[Any],
    score: Callable[[Any], list],
    *,
    share: bool = True,
) -> tuple[dict[str, list], int]:
    """Per variant, `score(batch)` concatenated over `batches`; and how many model calls replayed a prefix.

    `variants` maps names to head coefficients; the one variant without coefficients (None: the base model)
    is scored first on every batch. `score` must call the model without autograd and pass `input_ids` by
    keyword (as every pearzoo scorer does), or nothing is shared (the scores are the same either way).
    `share=False` runs every variant in full (the reference the sharing is tested against).
    """
    bases = [name for name, coeffs in variants.items() if not coeffs]
    order = bases + [name for name in variants if name not in bases]
    recorders: dict[int, FrozenPrefix] = {}
    if share and geometry is not None:
        for coeffs in variants.values():
            if coeffs and _lowest(coeffs) > 0 and _lowest(coeffs) not in recorders:
                recorders[_lowest(coeffs)] = FrozenPrefix(model, geometry, _lowest(coeffs))
    if not bases:
        recorders = {}  # nothing to record from: every variant runs in full
    out: dict[str, list] = {name: [] for name in variants}
    for batch in batches:
        for name in order:
            coeffs = variants[name]
            with ExitStack() as stack:
                if not coeffs:
                    # The base pass records for every L (each recorder keeps its own layer's output).
                    for recorder in recorders.values():
                        stack.enter_context(recorder.active())
                else:
                    recorder = recorders.get(_lowest(coeffs))
                    if recorder is not None:
                        stack.enter_context(recorder.active())
                    stack.enter_context(scale_heads(model, geometry, coeffs))
                out[name].extend(score(batch))
        for recorder in recorders.values():
            recorder.recorded.clear()
    return out, sum(r.replayed for r in recorders.values())
