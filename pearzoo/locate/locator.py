"""Locating suppression heads (spec §2): mean-ablate each head at the read-out position and score it.

Only the read-out position p changes under the ablation, so the clean prefix (positions < p) is run once per
configuration and cached, and each ablation recomputes a single token, for many heads at once: the rows of a
batch are (head, sample) pairs, row i*N + s being head i on sample s, with the heads sorted by layer. The clean
run at p is recorded once per configuration, and everything an ablation cannot change is taken from it:

- decoder layers below the batch's lowest layer are replayed (every row is clean there);
- at a head's own layer l its q/k/v are clean, so its attention module need not run: the module's output is the
  output projection of the clean projection input with the head's slice set to the mean. This holds where the
  module returns its output projection's output unchanged, which is checked bit for bit on the clean run; other
  modules (BLOOM adds the residual inside) run in full, with the slice replaced on the way in;
- `path` scope: above l every attention output is frozen at its clean value, so no attention runs at all and
  only the MLPs and norms recompute;
- `total` scope: above l attention runs for every row, against the clean prefix shared by all the heads of a
  batch: each layer's prefix keys and values are read once per sample instead of being tiled once per row. This
  goes through transformers' attention interface and is checked on the clean run; a model that does not use the
  interface gets the prefix tiled per row instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pearzoo.heads import HeadGeometry, HeadId, decoder_layers, output_projection, unobservable_projection
from pearzoo.locate.prefix_cache import SharedPrefixError, TiledCache, joinable, new_cache, shared_cache, shared_mode
from pearzoo.proxy import input_device
from pearzoo.recipe.schema import Scope

logger = logging.getLogger(__name__)

# The clean prefix runs in chunks of samples of about this many tokens, and the chunks' caches are joined: large
# enough for efficient matmuls, small enough that the allocator reuses the activations' memory from one chunk to the
# next (on CPU, one pass over all ~2000 prefix tokens of a configuration page-faults in fresh memory for every large
# activation; SmolLM2-135M: ~400k faults, ~10% of the prefix's time).
PREFIX_TOKENS = 512


# --- read-out metric -----------------------------------------------------------------------------------


def _resident(module: nn.Module) -> Any:
    """A block in which `module`'s weights are real tensors: accelerate's offload (a device map with `cpu`/`disk`
    entries) keeps them on the meta device between calls and loads them only around the module's own forward."""
    if getattr(getattr(module, "_hf_hook", None), "offload", False):
        from accelerate.utils import align_module_device

        return align_module_device(module)
    return contextlib.nullcontext()


class _Readout:
    """logit[target] - mean over the vocabulary of the logits, from the final hidden state (spec §2.2).

    For a plain linear head both terms are dot products with precomputed rows, so the full vocabulary
    projection is never materialised. Models with a non-linear logit transform take the full path.
    """

    def __init__(self, model: Any) -> None:
        self.head = model.get_output_embeddings()
        cfg = model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.linear = isinstance(self.head, nn.Linear) and not self.softcap
        if self.linear:
            with _resident(self.head):
                w = self.head.weight
                self.w_mean = w.float().mean(0)
                bias = self.head.bias
                self.b_mean = bias.float().mean() if bias is not None else None

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.linear:
            with _resident(self.head):
                w = self.head.weight
                hidden = hidden.to(w.device).float()
                targets = targets.to(w.device)
                target_logit = (w[targets].float() * hidden).sum(-1)
                mean_logit = hidden @ self.w_mean
                if self.head.bias is not None:
                    target_logit = target_logit + self.head.bias[targets].float()
                    mean_logit = mean_logit + self.b_mean
                return target_logit - mean_logit
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        targets = targets.to(logits.device)
        return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.mean(-1)


# --- running the model ----------------------------------------------------------------------------------


def _cache_kwarg(base: Any) -> str:
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# --- module replay ------------------------------------------------------------------------------------------


class _Replay(nn.Module):
    """Stands in for a module (decoder layer, attention) whose output at p is already known."""

    def __init__(self, original: nn.Module, output: Any) -> None:
        super().__init__()
        self._original = [original]  # a list, so it is not registered as a submodule
        self._output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Models read per-layer attributes (e.g. `attention_type`) before calling a layer.
            return getattr(self.__dict__["_original"][0], name)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _copy(output: Any) -> Any:
    """A module's output with its first tensor copied (the rest is replayed as it was)."""
    first = _first(output)
    return _with_first(output, first.clone()) if isinstance(first, torch.Tensor) else output


def _with_first(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _tile(t: torch.Tensor, repeats: int) -> torch.Tensor:
    return t.repeat(repeats, *([1] * (t.ndim - 1))) if repeats > 1 else t


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return model.get_submodule(head), name


@dataclass
class _Clean:
    cache: Any
    layer_out: list[Any]  # per layer: the layer's output object (tensor or tuple) at p, batch N
    attn_out: list[Any]  # per layer: the output object of the output projection's parent module at p
    proj_in: list[torch.Tensor]  # per layer: output-projection input at p [N, 1, inner]
    proj_out: list[torch.Tensor]  # per layer: output-projection output at p [N, 1, hidden]
    pure: list[bool]  # per layer: the parent module returns the output projection's output unchanged
    hidden: torch.Tensor  # final hidden state at p [N, hidden]
    metric: torch.Tensor  # [N]


class _Locator:
    def __init__(self, model: Any, geometry: HeadGeometry) -> None:
        self.model = model
        self.geometry = geometry
        self.base = model.base_model
        self.cache_kw = _cache_kwarg(self.base)
        self.layers = decoder_layers(model, geometry)
        self.projections = [output_projection(model, geometry, l) for l in range(geometry.num_layers)]
        self.attention_paths = [geometry.module_path(l).rpartition(".")[0] for l in range(geometry.num_layers)]
        self.attentions = [model.get_submodule(p) for p in self.attention_paths]
        self.readout = _Readout(model)
        self.shared: bool | None = None  # shared-prefix attention verified on this model (None: not yet tried)

    def _step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.base(input_ids=tokens.to(input_device(self.model)), use_cache=True, **{self.cache_kw: cache})
        return out.last_hidden_state[:, -1, :]

    def _prefix(self, sequences: torch.Tensor, p: int) -> Any:
        """The clean cache of positions < p for every sample, run in chunks of samples (`PREFIX_TOKENS`)."""
        samples = sequences.shape[0]
        per = max(1, PREFIX_TOKENS // max(1, p))
        caches = []
        for start in range(0, samples, per):
            cache = new_cache(self.model)
            ids = sequences[start : start + per, :p].to(input_device(self.model))
            self.base(input_ids=ids, use_cache=True, **{self.cache_kw: cache})
            if not caches and per < samples and not all(joinable(layer) for layer in cache.layers):
                # A cache layer holding other per-sample state: one run for all samples.
                cache = new_cache(self.model)
                self.base(input_ids=sequences[:, :p].to(input_device(self.model)), use_cache=True, **{self.cache_kw: cache})
                return cache
            caches.append(cache)
        joined = caches[0]
        if len(caches) > 1:
            for i, layer in enumerate(joined.layers):
                if isinstance(getattr(layer, "keys", None), torch.Tensor):
                    layer.keys = torch.cat([c.layers[i].keys for c in caches])
                    layer.values = torch.cat([c.layers[i].values for c in caches])
        return joined

    def clean(self, sequences: torch.Tensor, p: int) -> _Clean:
        cache = self._prefix(sequences, p)
        L = self.geometry.num_layers
        layer_out: list[Any] = [None] * L
        attn_out: list[Any] = [None] * L
        proj_in: list[Any] = [None] * L
        proj_out: list[Any] = [None] * L
        handles = []
        try:
            # Copies, taken as each module returns: the values replayed later must not follow in-place updates.
            for l in range(L):
                handles.append(self.layers[l].register_forward_hook(lambda m, a, o, l=l: layer_out.__setitem__(l, _copy(o))))
                handles.append(self.attentions[l].register_forward_hook(lambda m, a, o, l=l: attn_out.__setitem__(l, _copy(o))))
                handles.append(self.projections[l].register_forward_pre_hook(lambda m, a, l=l: proj_in.__setitem__(l, a[0].clone())))
                handles.append(self.projections[l].register_forward_hook(lambda m, a, o, l=l: proj_out.__setitem__(l, o.clone())))
            n = sequences.shape[0]
            hidden = self._step(sequences[:, p : p + 1], TiledCache(cache, n, n, p).for_run(n))
        finally:
            for h in handles:
                h.remove()
        missing = [l for l in range(L) if proj_in[l] is None or layer_out[l] is None]
        if missing:
            raise unobservable_projection(self.geometry, missing[0])
        pure = []
        for l in range(L):
            first = _first(attn_out[l]) if attn_out[l] is not None else None
            pure.append(
                self.attentions[l] is not self.layers[l]
                and isinstance(first, torch.Tensor)
                and first.shape == proj_out[l].shape
                and torch.equal(first, proj_out[l])
            )
        metric = self.readout(hidden, sequences[:, p + 1])
        return _Clean(cache, layer_out, attn_out, proj_in, proj_out, pure, hidden, metric)

    def verify_shared(self, sequences: torch.Tensor, p: int, clean: _Clean) -> bool:
        """Run the clean token twice over (2N rows) through `shared_attention`; it must reproduce the clean run."""
        try:
            with shared_mode(self.attentions) as state:
                hidden = self._step(_tile(sequences[:, p : p + 1], 2), shared_cache(clean.cache))
        except (SharedPrefixError, RuntimeError) as exc:  # a shape the shared path does not handle: tile instead
            logger.debug("locate: shared-prefix attention unavailable (%s); tiling the prefix cache", exc)
            return False
        if state.calls == 0 or state.unconsumed or state.pending is not None:
            logger.debug("locate: attention bypassed the shared-prefix path; tiling the prefix cache")
            return False
        expected = _tile(clean.hidden, 2).to(hidden.device)
        scale = expected.abs().max().clamp_min(1e-6)
        tolerance = 1e-3 if hidden.dtype in (torch.float32, torch.float64) else 5e-2
        ok = bool(((hidden - expected).abs().max() <= tolerance * scale).item())
        if not ok:
            logger.debug("locate: shared-prefix attention differs from the model's; tiling the prefix cache")
        return ok

    def ablate(
        self, sequences: torch.Tensor, p: int, clean: _Clean, tiled: TiledCache | None, heads: list[HeadId], scope: Scope
    ) -> torch.Tensor:
        """pi~ for each head in `heads` (sorted by layer): [len(heads)].

        Rows are (head, sample) blocks of N. At layer j a row's head is below j (the row may differ from clean), at
        j (clean input, slice set to the mean) or above j (clean).
        """
        n = sequences.shape[0]
        g = len(heads)
        hd = self.geometry.head_dim
        low = heads[0].layer
        row_layer = torch.tensor([h.layer for h in heads]).repeat_interleave(n)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for i, h in enumerate(heads):
            by_layer.setdefault(h.layer, []).append((i, h.head))
        replaced: list[tuple[nn.Module, str, nn.Module]] = []
        handles = []
        live = False  # does any attention module run (and so read the prefix cache)?

        def replace(path: str, module: nn.Module, output: Any) -> None:
            parent, name = _parent(self.model, path)
            replaced.append((parent, name, module))
            setattr(parent, name, _Replay(module, output))

        def mean_ablated(l: int, entries: list[tuple[int, int]]) -> torch.Tensor:
            """Projection input of the rows of layer l's heads: clean, with each head's slice set to its mean."""
            x = clean.proj_in[l]
            mean = x.mean(0, keepdim=True)
            out = x.repeat(len(entries), *([1] * (x.ndim - 1)))
            view = out.view(len(entries), n, *x.shape[1:])
            for k, (_, h) in enumerate(entries):
                sl = slice(h * hd, (h + 1) * hd)
                view[k, :, :, sl] = mean[..., sl]
            return out

        def ablate_hook(mod: Any, args: tuple, entries: list[tuple[int, int]], mean_in: torch.Tensor) -> tuple:
            x = args[0].clone()
            view = x.view(g, n, *x.shape[1:])
            for i, h in entries:
                sl = slice(h * hd, (h + 1) * hd)
                view[i, :, :, sl] = mean_in[..., sl]
            return (x, *args[1:])

        def freeze_hook(mod: Any, args: tuple, out: torch.Tensor, layer: int) -> torch.Tensor:
            # Path scope: rows whose head sits below this layer see every head here at its clean value.
            rows = (row_layer < layer).to(out.device)
            frozen = _tile(clean.proj_out[layer], g)
            return torch.where(rows.view(-1, *([1] * (out.ndim - 1))), frozen, out)

        try:
            for l in range(low):
                out = clean.layer_out[l]
                replace(f"{self.geometry.layers_path}.{l}", self.layers[l], _with_first(out, _tile(_first(out), g)))
            for l in range(low, self.geometry.num_layers):
                entries = by_layer.get(l, [])
                # Attention at l sees only clean inputs unless a row's head sits below l and the scope is total.
                if clean.pure[l] and (scope is Scope.path or l == low):
                    out = clean.proj_out[l].repeat(g, *([1] * (clean.proj_out[l].ndim - 1)))  # a copy: written below
                    if entries:
                        first, last = entries[0][0], entries[-1][0] + 1  # heads sorted: one block of rows
                        out[first * n : last * n] = self.projections[l](mean_ablated(l, entries))
                    replace(self.attention_paths[l], self.attentions[l], _with_first(clean.attn_out[l], out))
                    continue
                live = True
                if entries:
                    mean_in = clean.proj_in[l].mean(0, keepdim=True)
                    handles.append(
                        self.projections[l].register_forward_pre_hook(
                            lambda m, a, entries=entries, mean_in=mean_in: ablate_hook(m, a, entries, mean_in)
                        )
                    )
                if scope is Scope.path and l > low:
                    handles.append(self.projections[l].register_forward_hook(lambda m, a, o, l=l: freeze_hook(m, a, o, l)))
            tokens = _tile(sequences[:, p : p + 1], g)
            if live and tiled is not None:
                hidden = self._step(tokens, tiled.for_run(g * n))
            elif live:
                if not self.shared:
                    raise AssertionError("live attention without a tiled cache or the shared-prefix path")
                with shared_mode(self.attentions):
                    hidden = self._step(tokens, shared_cache(clean.cache))
            else:
                # No attention runs: the cache only tells the model where p is.
                hidden = self._step(tokens, shared_cache(clean.cache))
        finally:
            for h in handles:
                h.remove()
            for parent, name, module in reversed(replaced):
                setattr(parent, name, module)
        targets = _tile(sequences[:, p + 1], g)
        return self.readout(hidden, targets).view(g, n).mean(1)
