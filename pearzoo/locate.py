"""Locating suppression heads (spec §2): mean-ablate each head at the read-out position and score it.

Only the read-out position p changes under the ablation, so the clean prefix (positions < p) is run
once per configuration and cached. Each ablation then recomputes a single token, for many heads at
once: the rows of one batch are (head, sample) pairs of one layer l. Decoder layers below l are not
recomputed at all: their clean output at p is replayed. In `path` scope the output projections of
layers above l return their clean values too (other heads' attention outputs are frozen), so only the
MLPs and norms carry the ablated head's effect to the logits.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pearzoo.heads import HeadGeometry, HeadId, decoder_layers, output_projection, unobservable_projection
from pearzoo.proxy import TokenSpace, generator, input_device, sample_sequences
from pearzoo.recipe.schema import LocateSpec, Scope

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class ConfigurationResult:
    samples: int
    length: int
    clean_metric: float
    ablated_metric: torch.Tensor  # [layers, heads]

    @property
    def delta(self) -> torch.Tensor:
        return self.ablated_metric - self.clean_metric

    @property
    def score(self) -> torch.Tensor:
        return self.ablated_metric / self.clean_metric - 1.0


@dataclass
class LocateResult:
    """Scores of every head, averaged over the configurations (spec §2.4), and the top-K set."""

    scope: Scope
    geometry: HeadGeometry
    configurations: list[ConfigurationResult]
    k: int
    seconds: float = 0.0
    ranking: list[HeadId] = field(default_factory=list)

    @property
    def score(self) -> torch.Tensor:
        return torch.stack([c.score for c in self.configurations]).mean(0)

    @property
    def delta(self) -> torch.Tensor:
        return torch.stack([c.delta for c in self.configurations]).mean(0)

    @property
    def selected(self) -> list[HeadId]:
        return self.ranking[: self.k]


# --- read-out metric -----------------------------------------------------------------------------------


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
            w = self.head.weight
            self.w_mean = w.float().mean(0)
            bias = self.head.bias
            self.b_mean = bias.float().mean() if bias is not None else None

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.linear:
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


# --- cache handling --------------------------------------------------------------------------------------


def _cache_kwarg(base: Any) -> str:
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: Any) -> Any:
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


class _TiledCache:
    """The clean prefix cache tiled to `rows` rows (row r = sample r mod N), built once per configuration."""

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


def cache_bytes_per_row(prefix_cache: Any) -> int:
    total = 0
    for layer in prefix_cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            per = layer.keys[:1].numel() * layer.keys.element_size()
            total += 2 * per * (layer.keys.shape[-2] + 1) // max(1, layer.keys.shape[-2])
    return total


# --- module replay ------------------------------------------------------------------------------------------


class _Replay(nn.Module):
    """Stands in for a decoder layer whose output at p is already known."""

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


def _with_first(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _tile(t: torch.Tensor, repeats: int) -> torch.Tensor:
    return t.repeat(repeats, *([1] * (t.ndim - 1))) if repeats > 1 else t


@dataclass
class _Clean:
    cache: Any
    layer_out: list[Any]  # per layer: the layer's output object (tensor or tuple) at p, batch N
    proj_in: list[torch.Tensor]  # per layer: output-projection input at p [N, 1, inner]
    proj_out: list[torch.Tensor]  # per layer: output-projection output at p [N, 1, hidden]
    metric: torch.Tensor  # [N]


class _Locator:
    def __init__(self, model: Any, geometry: HeadGeometry) -> None:
        self.model = model
        self.geometry = geometry
        self.base = model.base_model
        self.cache_kw = _cache_kwarg(self.base)
        self.layers = decoder_layers(model, geometry)
        self.projections = [output_projection(model, geometry, l) for l in range(geometry.num_layers)]
        self.readout = _Readout(model)

    def _step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.base(input_ids=tokens.to(input_device(self.model)), use_cache=True, **{self.cache_kw: cache})
        return out.last_hidden_state[:, -1, :]

    def clean(self, sequences: torch.Tensor, p: int) -> _Clean:
        cache = _new_cache(self.model)
        self.base(input_ids=sequences[:, :p].to(input_device(self.model)), use_cache=True, **{self.cache_kw: cache})
        L = self.geometry.num_layers
        layer_out: list[Any] = [None] * L
        proj_in: list[Any] = [None] * L
        proj_out: list[Any] = [None] * L
        handles = []
        try:
            for l in range(L):
                handles.append(self.layers[l].register_forward_hook(lambda m, a, o, l=l: layer_out.__setitem__(l, o)))
                handles.append(self.projections[l].register_forward_pre_hook(lambda m, a, l=l: proj_in.__setitem__(l, a[0])))
                handles.append(self.projections[l].register_forward_hook(lambda m, a, o, l=l: proj_out.__setitem__(l, o)))
            hidden = self._step(sequences[:, p : p + 1], _TiledCache(cache, sequences.shape[0], sequences.shape[0], p).for_run(sequences.shape[0]))
        finally:
            for h in handles:
                h.remove()
        missing = [l for l in range(L) if proj_in[l] is None or layer_out[l] is None]
        if missing:
            raise unobservable_projection(self.geometry, missing[0])
        metric = self.readout(hidden, sequences[:, p + 1])
        return _Clean(cache=cache, layer_out=layer_out, proj_in=proj_in, proj_out=proj_out, metric=metric)

    def ablate(
        self, sequences: torch.Tensor, p: int, clean: _Clean, tiled: _TiledCache, heads: list[HeadId], scope: Scope
    ) -> torch.Tensor:
        """pi~ for each head in `heads` (sorted by layer): [len(heads)].

        Rows are (head, sample) blocks of N. Below the lowest layer every row is clean, so those layers are
        replayed; at each head's own layer its rows get the mean head output.
        """
        n = sequences.shape[0]
        g = len(heads)
        hd = self.geometry.head_dim
        low = heads[0].layer
        row_layer = torch.tensor([h.layer for h in heads]).repeat_interleave(n)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for i, h in enumerate(heads):
            by_layer.setdefault(h.layer, []).append((i, h.head))
        originals: dict[int, nn.Module] = {}
        handles = []

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
                originals[l] = self.layers[l]
                out = clean.layer_out[l]
                self.layers[l] = _Replay(originals[l], _with_first(out, _tile(_first(out), g)))
            for l, entries in by_layer.items():
                mean_in = clean.proj_in[l].mean(0, keepdim=True)
                handles.append(
                    self.projections[l].register_forward_pre_hook(
                        lambda m, a, entries=entries, mean_in=mean_in: ablate_hook(m, a, entries, mean_in)
                    )
                )
            if scope is Scope.path:
                for l in range(low + 1, self.geometry.num_layers):
                    handles.append(self.projections[l].register_forward_hook(lambda m, a, o, l=l: freeze_hook(m, a, o, l)))
            hidden = self._step(_tile(sequences[:, p : p + 1], g), tiled.for_run(g * n))
        finally:
            for h in handles:
                h.remove()
            for l, module in originals.items():
                self.layers[l] = module
        targets = _tile(sequences[:, p + 1], g)
        return self.readout(hidden, targets).view(g, n).mean(1)


def locate_heads(
    model: Any,
    geometry: HeadGeometry,
    spec: LocateSpec,
    space: TokenSpace,
    seed: int,
    progress: Progress | None = None,
    sequences: list[torch.Tensor] | None = None,
) -> LocateResult:
    """Score every head's effect on copying and pick the top-K suppression heads.

    Args:
        model: a loaded `*ForCausalLM` model in eval mode (any device or device_map).
        geometry (`HeadGeometry`): from `pearzoo.heads.geometry_from_config`.
        spec (`LocateSpec`): scope, K, configurations and batching bound.
        space (`TokenSpace`): ids to sample and the optional BOS.
        seed (`int`): the build seed; configuration i draws from stream ``locate/i``.
        progress (*optional*): called with the number of heads finished after each batch.
        sequences (*optional*): pre-drawn inputs per configuration (tests); shapes must match `spec`.

    Returns:
        `LocateResult` with per-configuration clean and ablated metrics, the averaged scores and ranking.
    """
    start = time.perf_counter()
    loc = _Locator(model, geometry)
    results = []
    with torch.inference_mode():
        for index, conf in enumerate(spec.configurations):
            seqs = sequences[index] if sequences is not None else sample_sequences(
                space, conf.samples, conf.length, generator(seed, f"locate/{index}")
            )
            p = space.prefix + 2 * conf.length - 2
            clean = loc.clean(seqs, p)
            pi = clean.metric.mean().item()
            ablated = torch.empty(geometry.num_layers, geometry.num_heads, dtype=torch.float64)
            per_row = max(1, cache_bytes_per_row(clean.cache))
            rows_cap = min(spec.max_batch_rows, int(spec.max_cache_gib * 2**30) // per_row)
            group = max(1, rows_cap // conf.samples)
            heads = geometry.all_heads()
            tiled = _TiledCache(clean.cache, conf.samples, min(group, len(heads)) * conf.samples, p)
            for start_index in range(0, len(heads), group):
                chunk = heads[start_index : start_index + group]
                values = loc.ablate(seqs, p, clean, tiled, chunk, spec.scope).double().cpu()
                for head, value in zip(chunk, values.tolist()):
                    ablated[head.layer, head.head] = value
                if progress is not None:
                    progress(len(chunk))
            del tiled
            results.append(ConfigurationResult(conf.samples, conf.length, pi, ablated))
            logger.info("locate: configuration %s (N=%d, n=%d) clean metric %.4f", index, conf.samples, conf.length, pi)
    result = LocateResult(scope=spec.scope, geometry=geometry, configurations=results, k=spec.k)
    score = result.score
    order = sorted(geometry.all_heads(), key=lambda h: (-score[h.layer, h.head].item(), h))
    result.ranking = order
    result.seconds = time.perf_counter() - start
    return result
