"""Head geometry: (layer, head) -> module, tensor name, axis and slice. The only module that knows it.

Everything here is derived from a recipe's `heads` section and the model's config, so a new
architecture needs a recipe file, not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pearzoo.errors import InvalidInputError
from pearzoo.recipe.schema import Heads, Layout

_HEAD_RE = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class HeadId:
    """A query head: 0-indexed layer and head (the query-head index under GQA/MQA). Written ``L.H``."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @classmethod
    def parse(cls, text: str) -> "HeadId":
        m = _HEAD_RE.match(text.strip())
        if not m:
            raise InvalidInputError(f"head '{text}': expected LAYER.HEAD, e.g. 14.15", field="head")
        return cls(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class HeadGeometry:
    """Where the heads of one model sit."""

    num_layers: int
    num_heads: int
    head_dim: int
    layout: Layout
    layers_path: str
    output_projection: str
    checkpoint_layers_path: str | None = None  # the layer list as checkpoint tensor names spell it, if different

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def all_heads(self) -> list[HeadId]:
        return [HeadId(l, h) for l in range(self.num_layers) for h in range(self.num_heads)]

    def module_path(self, layer: int) -> str:
        """Module path of layer `layer`'s output projection, relative to the `*ForCausalLM` model."""
        return f"{self.layers_path}.{layer}.{self.output_projection}"

    def tensor_name(self, layer: int) -> str:
        """Checkpoint tensor name of the weight the fold scales (the module path unless the recipe names
        `checkpoint_layers`, as for decoders nested in a multimodal model)."""
        layers = self.checkpoint_layers_path or self.layers_path
        return f"{layers}.{layer}.{self.output_projection}.weight"

    @property
    def axis(self) -> int:
        """Axis of the weight along which heads are laid out (spec §4)."""
        return 1 if self.layout is Layout.columns else 0

    def head_slice(self, head: int) -> slice:
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def check(self, head: HeadId) -> HeadId:
        """Raise `InvalidInputError` unless `head` exists in this model."""
        if not (0 <= head.layer < self.num_layers):
            raise InvalidInputError(
                f"head {head}: layer {head.layer} out of range (model has {self.num_layers} layers)", field="layer"
            )
        if not (0 <= head.head < self.num_heads):
            raise InvalidInputError(
                f"head {head}: head {head.head} out of range (model has {self.num_heads} heads per layer)", field="head"
            )
        return head

    def expected_shape(self, hidden_size: int) -> tuple[int, int]:
        inner = self.num_heads * self.head_dim
        return (hidden_size, inner) if self.layout is Layout.columns else (inner, hidden_size)


def _get(config: Any, key: str) -> Any:
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def _first(config: Any, keys: list[str], what: str) -> int:
    for key in keys:
        value = _get(config, key)
        if value is not None:
            return int(value)
    raise InvalidInputError(f"config has none of {', '.join(keys)} (needed for {what})", field=what)


def text_config(config: Any) -> Any:
    """The decoder's config for multimodal wrappers; the config itself otherwise.

    A raw config.json mapping of a multimodal model (Gemma 3) nests the decoder's keys under `text_config`, and
    omits those left at their defaults: it is read through its transformers config class, which fills them in.
    """
    if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        from transformers import AutoConfig

        try:
            config = AutoConfig.for_model(**config)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"config: cannot read the nested text_config ({exc})".splitlines()[0], field="text_config") from exc
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def geometry_from_config(heads: Heads, config: Any) -> HeadGeometry:
    """Build the head geometry for a model from its recipe and config (a dict or `PretrainedConfig`).

    head_dim is read from the config when the recipe names a key for it (Gemma, Qwen3 set it apart
    from hidden/heads, spec §4); otherwise hidden_size // num_heads.
    """
    cfg = text_config(config)
    num_layers = _first(cfg, heads.num_layers, "num_layers")
    num_heads = _first(cfg, heads.num_heads, "num_heads")
    head_dim = None
    for key in heads.head_dim:
        value = _get(cfg, key)
        if value is not None:
            head_dim = int(value)
            break
    if head_dim is None:
        hidden = _first(cfg, heads.hidden_size, "hidden_size")
        if hidden % num_heads:
            raise InvalidInputError(f"hidden_size {hidden} is not divisible by num_heads {num_heads}", field="head_dim")
        head_dim = hidden // num_heads
    if num_layers < 1 or num_heads < 1 or head_dim < 1:
        raise InvalidInputError("config gives a non-positive number of layers, heads or head_dim", field="heads")
    return HeadGeometry(
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        layout=heads.layout,
        layers_path=heads.layers,
        output_projection=heads.output_projection,
        checkpoint_layers_path=heads.checkpoint_layers,
    )


def output_projection(model: Any, geometry: HeadGeometry, layer: int) -> Any:
    """The output-projection module of `layer` in a loaded `*ForCausalLM` model."""
    try:
        return model.get_submodule(geometry.module_path(layer))
    except AttributeError as exc:
        raise InvalidInputError(
            f"model has no module '{geometry.module_path(layer)}' (recipe heads.layers/output_projection)",
            field="heads",
        ) from exc


def unobservable_projection(geometry: HeadGeometry, layer: int) -> InvalidInputError:
    """The error for a model that computes its attention output without calling the recipe's module.

    BLOOM with pretraining_tp > 1 and slow_but_exact multiplies slices of the weight itself, so no hook on
    the output projection ever runs: its heads can be neither observed (locate) nor scaled (hooks).
    """
    return InvalidInputError(
        f"layer {layer}: the model never calls {geometry.module_path(layer)}, so its heads cannot be observed "
        "(unsupported configuration of this architecture)",
        field="heads",
    )


def decoder_layers(model: Any, geometry: HeadGeometry) -> Any:
    """The decoder-layer ModuleList of a loaded model."""
    try:
        return model.get_submodule(geometry.layers_path)
    except AttributeError as exc:
        raise InvalidInputError(f"model has no module '{geometry.layers_path}' (recipe heads.layers)", field="heads") from exc
