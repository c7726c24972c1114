"""Pure folding: weight + coefficients + geometry -> weight. No I/O, no model.

Spec §4: head h's slice of the output projection (Linear columns, Conv1D rows) is multiplied by tau.
The bias, where there is one, belongs to no head and is never scaled, so it is not an input here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from pearzoo.errors import InvalidInputError
from pearzoo.recipe.schema import Layout


def fold_weight(
    weight: torch.Tensor, coefficients: Mapping[int, float], head_dim: int, layout: Layout
) -> torch.Tensor:
    """Return a copy of `weight` with each head's slice scaled by its coefficient.

    The product is taken in float32 and rounded once to the weight's dtype. A coefficient of exactly
    1.0 leaves its slice bit-identical (the slice is not touched).

    Args:
        weight (`torch.Tensor`): output-projection weight, 2-D.
        coefficients (`Mapping[int, float]`): head index -> tau.
        head_dim (`int`): width of one head's slice.
        layout (`Layout`): `columns` (nn.Linear) or `rows` (GPT-2 Conv1D).

    Raises:
        InvalidInputError: a head outside the weight, or a non-finite coefficient.
    """
    return fold_weight_(weight.clone(), coefficients, head_dim, layout)


def fold_weight_(
    weight: torch.Tensor, coefficients: Mapping[int, float], head_dim: int, layout: Layout, *, name: str = "weight"
) -> torch.Tensor:
    """`fold_weight` in place: scale the slices of `weight` itself and return it.

    Same product and rounding as `fold_weight`. Only the slices of heads whose coefficient is not 1.0 are
    read and written, so the cost is that of the scaled heads, not of the tensor. Everything is checked
    before the first slice is written, the scaled slices included: a product that is not finite once rounded
    to the weight's own dtype (a bf16/fp16 overflow: fp16 tops out at 65504) is refused and `weight` is
    left unchanged. `name` names the tensor in that error.

    Raises:
        InvalidInputError: a head outside the weight, a non-finite coefficient, or a scaled slice that
            overflows the weight's dtype.
    """
    _check(weight, coefficients, head_dim, layout)
    scaled = []
    for head, tau in sorted(coefficients.items()):
        tau = float(tau)
        if tau == 1.0:
            continue
        sl = slice(head * head_dim, (head + 1) * head_dim)
        block = weight[:, sl] if layout is Layout.columns else weight[sl, :]
        new = (block.to(torch.float32) * tau).to(weight.dtype)
        # Only where the product made it so: a base that already holds inf/nan is bound by its digest.
        if not bool((torch.isfinite(new) | ~torch.isfinite(block)).all()):
            dtype = str(weight.dtype).removeprefix("torch.")
            raise InvalidInputError(
                f"{name}: coefficient {tau:g} for head {head} overflows {dtype} "
                f"(largest |weight| in its slice {block.abs().max().item():g})",
                field="coefficient",
            )
        scaled.append((block, new))
    for block, new in scaled:
        block.copy_(new)
    return weight


def _check(weight: torch.Tensor, coefficients: Mapping[int, float], head_dim: int, layout: Layout) -> None:
    if weight.ndim != 2:
        raise InvalidInputError(f"output projection must be 2-D, got shape {tuple(weight.shape)}")
    num_heads = weight.shape[1 if layout is Layout.columns else 0] // head_dim
    for head, tau in coefficients.items():
        if not (0 <= head < num_heads):
            raise InvalidInputError(f"head {head} out of range (weight holds {num_heads} heads)", field="head")
        if not math.isfinite(float(tau)):
            raise InvalidInputError(f"coefficient for head {head} is not finite ({float(tau)})", field="coefficient")
