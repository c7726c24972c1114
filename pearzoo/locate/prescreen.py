"""Attribution pre-screen for locate: a first-order estimate of every head's ablation effect in one pass.

Mean-ablating head (l, h) at the read-out position p moves the projection input x_l(p) by
d = mean_s(x_l(p))[slice] - x_l(p)[slice]. To first order the metric moves by d . grad, where grad is the
metric's gradient with respect to x_l(p) (attribution patching). Nothing before p depends on x_l(p), so that
gradient needs a forward and backward of the single token at p over the clean prefix cache: about the cost of
scoring one head exactly, for all heads at once.

The scope decides which paths the gradient takes:
- `total`: every path from x_l(p) to the metric, later attention included;
- `path`: the later layers' attention outputs are held at their clean values (spec §2.3), so the gradient is
  cut at the input of every output projection and reaches x_l(p) through the residual stream and MLPs only.

The estimate is only a ranking aid: `locate_heads(..., candidates=M)` scores the M heads it ranks highest
exactly and takes the top-K from those. `bench/locate.py --candidates M` reports how often that is the
exact scan's top-K.
"""

from __future__ import annotations

from typing import Any

import torch

from pearzoo.locate.prefix_cache import TiledCache
from pearzoo.recipe.schema import Scope


def attribution(locator: Any, sequences: torch.Tensor, p: int, clean: Any, scope: Scope) -> torch.Tensor:
    """Estimated mean ablated metric of every head, [layers, heads] float64 (clean metric + first-order change).

    `locator` is locate's `_Locator` and `clean` its clean run of `sequences` at `p`; must run outside
    `torch.inference_mode` (it differentiates). Model parameters get no `.grad`.
    """
    geometry = locator.geometry
    n = sequences.shape[0]
    hd = geometry.head_dim
    leaves: list[torch.Tensor | None] = [None] * geometry.num_layers

    def pre_hook(mod: Any, args: tuple, layer: int) -> tuple:
        x = args[0]
        leaf = x.detach().clone().requires_grad_(True)
        leaves[layer] = leaf
        if scope is Scope.path:
            # The projection input is a fresh leaf: nothing flows back into this layer's attention.
            return (leaf, *args[1:])
        # Same value, and the gradient reaches the leaf while still flowing back through x to earlier layers.
        return (x + (leaf - leaf.detach()), *args[1:])

    handles = []
    try:
        for l, proj in enumerate(locator.projections):
            handles.append(proj.register_forward_pre_hook(lambda m, a, l=l: pre_hook(m, a, l)))
        with torch.inference_mode(False), torch.enable_grad():
            # The prefix cache was made under inference mode; a tiled copy of it is an ordinary tensor that
            # autograd may save. The embedding output needs grad so that total scope records every path.
            cache = TiledCache(clean.cache, n, n, p).for_run(n)
            embed = locator.model.get_input_embeddings()
            handles.append(embed.register_forward_hook(lambda m, a, o: o.detach().requires_grad_(scope is Scope.total)))
            tokens = sequences[:, p : p + 2].clone()  # inference tensors cannot be saved for backward
            hidden = locator._step(tokens[:, :1], cache)
            metric = locator.readout(hidden, tokens[:, 1])
            used = [leaf for leaf in leaves if leaf is not None]
            grads = dict(zip(map(id, used), torch.autograd.grad(metric.sum(), used, allow_unused=True)))
    finally:
        for h in handles:
            h.remove()
    estimate = torch.empty(geometry.num_layers, geometry.num_heads, dtype=torch.float64)
    base = clean.metric.double().mean().item()
    for l in range(geometry.num_layers):
        leaf = leaves[l]
        grad = grads.get(id(leaf)) if leaf is not None else None
        x = clean.proj_in[l].double()
        if grad is None:
            estimate[l] = base
            continue
        d = (x.mean(0, keepdim=True) - x) * grad.double().to(x.device)  # [N, 1, inner]
        per_head = d.reshape(n, -1, geometry.num_heads, hd).sum((1, 3)).mean(0)  # [heads]
        estimate[l] = base + per_head.cpu()
    return estimate

