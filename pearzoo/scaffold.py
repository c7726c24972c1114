"""`pearzoo recipes scaffold`: write a recipe from what `pearzoo.probe` finds, and check it.

The probe (pearzoo/probe.py) finds the output projection, its layout and head_dim on a tiny random model;
this module adds what a recipe needs besides (the position-embedding family, how checkpoints name the
layers, the refusals of recipes/unsupported.yaml and of hybrid configs), writes the YAML and runs the fold
checks on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pearzoo.errors import InvalidInputError, UnsupportedArchitectureError
from pearzoo.probe import Probe, _refuse, check_model_type, default_config, probe_model, tiny_config, tiny_model


def hybrid_reason(config: Any) -> str | None:
    """Why a full-size config of this model_type has layers without attention (None when every layer has it)."""
    text = config.get_text_config(decoder=True)
    kinds = getattr(text, "layer_types", None) or []
    other = sorted({k for k in kinds if isinstance(k, str) and "attention" not in k})
    if other:
        return f"its layers mix attention with {', '.join(other)} blocks (hybrid), so not every layer has heads"
    return None


def position_embedding_of(config: Any) -> str:
    """rope, alibi or learned, from the config's keys (a scaffolded recipe's reviewer confirms it)."""
    text = config.get_text_config(decoder=True)
    if getattr(text, "alibi", False):
        return "alibi"
    keys = set(text.to_dict())
    if keys & {"rope_parameters", "rope_theta", "rotary_dim", "rotary_pct", "rope_scaling", "qk_rope_head_dim"}:
        return "rope"
    return "learned"


_BASES = {"rope": "rope/llama", "learned": "learned/gpt2", "alibi": "alibi/bloom"}


def render_recipe(probe: Probe, model_type: str, architecture: str, position: str, k: str = "3%") -> str:
    """The YAML of a scaffolded recipe: `extends` the family's base recipe, with the probed `heads` section."""
    import yaml

    recipe_name = model_type.replace("-", "_").lower()
    head_dim = f"config.{probe.head_dim_keys[0]}" if probe.head_dim_keys else "hidden_size // heads"
    nested = f"; the decoder is nested under {probe.text_prefix}" if probe.text_prefix else ""
    header = (
        f"# {architecture}.{probe.layers}[i].{probe.output_projection} ({'Conv1D' if probe.layout == 'rows' else 'nn.Linear'}) "
        f"takes num_heads x {head_dim} per-head outputs{nested}.\n"
        "# Found by `pearzoo recipes scaffold` (one head's output scaled, the projection input's slice followed);\n"
        "# review against the modeling code before committing.\n"
    )
    document = {
        "schema_version": 1,
        "extends": _BASES[position],
        "id": f"{position}/{recipe_name}",
        "version": "1.0.0",
        "description": f"{architecture.removesuffix('ForCausalLM').removesuffix('ForConditionalGeneration')} decoders ({position})",
        "position_embedding": position,
        "match": {"model_types": [model_type]},
        "heads": probe.heads_section(),
        "locate": {"k": k},
    }
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=120)


@dataclass(frozen=True)
class ScaffoldResult:
    path: str
    recipe_id: str
    model_type: str
    probe: Probe
    checks: list[str]


def scaffold_recipe(ref: str, out_root: Any, *, force: bool = False, check: bool = True) -> ScaffoldResult:
    """Scaffold a recipe for a model_type (or a model folder / Hub id, whose config names it) under `out_root`.

    Raises:
        UnsupportedArchitectureError: transformers has no such model_type, its layers are hybrid, or probing
            finds no per-head output projection.
        InvalidInputError: the recipe file exists (without `force`), or a conformance check fails.
    """
    from pathlib import Path

    from pearzoo.recipe.catalog import unsupported_reasons

    model_type = _model_type_of(ref)
    known = unsupported_reasons().get(model_type)
    if known:
        raise _refuse(model_type, f"cannot be patched: {known} (recipes/unsupported.yaml)")
    default = default_config(model_type)
    reason = hybrid_reason(default)
    if reason:
        raise _refuse(model_type, reason)
    config = tiny_config(model_type)
    model = tiny_model(config)
    probe = probe_model(model, model_type)
    probe = dataclasses.replace(probe, checkpoint_layers=checkpoint_layers(model, probe))
    position = position_embedding_of(default)
    text = render_recipe(probe, model_type, type(model).__name__, position)
    recipe_id = f"{position}/{model_type.replace('-', '_').lower()}"
    path = Path(out_root) / f"{recipe_id}.yaml"
    if path.exists() and not force:
        raise InvalidInputError(f"{path}: exists (pass --force to overwrite)", path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    from pearzoo.manifest.io import atomic_write_text

    atomic_write_text(path, text)
    checks: list[str] = []
    if check:
        from pearzoo.recipe.load import load_recipe

        try:
            checks = check_recipe(model, load_recipe(path))
        except InvalidInputError:
            path.unlink()  # nothing half-made is left behind
            raise
    return ScaffoldResult(str(path), recipe_id, model_type, probe, checks)


def checkpoint_layers(model: Any, probe: Probe) -> str | None:
    """How `save_pretrained` spells the layer list in tensor names, when not as the module path.

    transformers 5 saves some multimodal models under their original checkpoint names (Gemma 3:
    `language_model.model.layers` for the module `model.language_model.layers`); the fold reads and writes
    checkpoint tensors, so the recipe must name that spelling.
    """
    import tempfile
    from pathlib import Path

    from safetensors import safe_open

    suffix = f".0.{probe.output_projection}.weight"
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        names: list[str] = []
        for shard in Path(tmp).glob("*.safetensors"):
            with safe_open(str(shard), "pt") as f:
                names += [k for k in f.keys() if k.endswith(suffix)]
    if f"{probe.layers}{suffix}" in names:
        return None
    if len(names) != 1:
        raise _refuse(probe.layers, f"cannot tell how checkpoints name {probe.layers}{suffix} ({len(names)} candidates)")
    return names[0][: -len(suffix)]


def _model_type_of(ref: str) -> str:
    from pathlib import Path

    path = Path(ref)
    if (path / "config.json").is_file():
        import json

        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path / 'config.json'}: not readable JSON", path=str(path)) from exc
        if not isinstance(model_type, str):
            raise InvalidInputError(f"{path / 'config.json'}: no model_type", path=str(path))
        return model_type
    if "/" in ref:
        from transformers import AutoConfig

        from pearzoo.source import validate_hub_id

        validate_hub_id(ref)
        try:
            return AutoConfig.from_pretrained(ref).model_type
        except (OSError, ValueError) as exc:
            raise UnsupportedArchitectureError(f"{ref}: cannot read its config ({exc})".splitlines()[0]) from exc
    check_model_type(ref)
    return ref


def check_recipe(model: Any, recipe: Any) -> list[str]:
    """The conformance gate's three fold checks on a tiny model, one line each (tests/test_architectures.py
    runs them all, locate included). Raises `InvalidInputError` naming the first that fails."""
    import copy

    import torch

    from pearzoo.heads import HeadId, geometry_from_config, output_projection
    from pearzoo.hooks import scale_heads
    from pearzoo.patch.fold import fold_weight

    geometry = geometry_from_config(recipe.heads, model.config)
    cfg = model.config.get_text_config(decoder=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))

    def logits(m: Any) -> Any:
        with torch.no_grad():
            return m(input_ids=ids, use_cache=False).logits.float()

    heads = sorted({HeadId(0, 1 % geometry.num_heads), HeadId(geometry.num_layers - 1, geometry.num_heads - 1)})
    taus = {h: 0.5 + 0.4 * i for i, h in enumerate(heads)}
    base = logits(model)
    with scale_heads(model, geometry, taus):
        hooked = logits(model)
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for head, tau in taus.items():
            weight = output_projection(folded, geometry, head.layer).weight
            weight.copy_(fold_weight(weight, {head.head: tau}, geometry.head_dim, geometry.layout))
    gap, effect = (hooked - logits(folded)).abs().max().item(), (hooked - base).abs().max().item()
    if gap > 1e-4 or effect <= 1e-4:
        raise InvalidInputError(f"{recipe.id}: hooks vs fold differ by {gap:.2e} (effect {effect:.2e})", field="heads")
    lines = [f"hooks == fold: max |diff| {gap:.1e}, effect {effect:.2e}"]
    ones = copy.deepcopy(model)
    with torch.no_grad():
        for layer in range(geometry.num_layers):
            weight = output_projection(ones, geometry, layer).weight
            weight.copy_(fold_weight(weight, {h: 1.0 for h in range(geometry.num_heads)}, geometry.head_dim, geometry.layout))
    if not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ones.state_dict().values())):
        raise InvalidInputError(f"{recipe.id}: tau = 1 changed a tensor", field="heads")
    lines.append("tau = 1: every tensor bit-identical")
    proj = output_projection(model, geometry, 0)
    width = proj.weight.shape[1] if geometry.layout.value == "columns" else proj.weight.shape[0]
    if width != geometry.num_heads * geometry.head_dim:
        raise InvalidInputError(
            f"{recipe.id}: projection input {width} != {geometry.num_heads} heads x {geometry.head_dim}", field="heads"
        )
    lines.append(f"geometry: {geometry.num_layers} layers x {geometry.num_heads} heads x head_dim {geometry.head_dim}")
    return lines
