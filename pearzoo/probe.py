"""Find an architecture's per-head output projection by probing a tiny random model (`pearzoo recipes scaffold`).

The probe does not trust names. It runs a tiny random model of the architecture (built from its transformers
config class, shrunk) with a wrapped attention function that scales one head's output of one layer by a
factor, and records the input of every linear module. The attention output projection is the one module
of that layer whose input changed by exactly that factor in exactly one contiguous slice, with every other
slice untouched: its input is the per-head concatenation (spec §4), and the slice gives head_dim and the
head order. Doing this once per layer also shows that every layer has the projection (hybrid models with
recurrent layers do not). The result becomes a recipe's `heads` section; the conformance gate
(`tests/test_architectures.py`) then checks the recipe numerically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pearzoo.errors import InvalidInputError, UnsupportedArchitectureError

# Small values for the config attributes that size a model; only keys the config class already has are set.
# head_dim (16) differs from hidden_size / num_heads (48 / 4 = 12), so a recipe that derives head_dim when the
# model reads it from the config (or the reverse) fails the gate; num_key_value_heads 2 < 4 makes it GQA.
TINY_SIZES: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 48,
    "d_model": 48,
    "n_embd": 48,
    "n_embed": 48,
    "num_hidden_layers": 3,
    "num_layers": 3,
    "n_layer": 3,
    "n_layers": 3,
    "num_attention_heads": 4,
    "num_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 64,
    "ffn_dim": 64,
    "n_inner": 64,
    "moe_intermediate_size": 32,
    "expert_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "moe_num_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "q_lora_rank": 24,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 12,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "sliding_window": 8,
}

# Where the generic sizes do not fit the modeling code (each checked against it).
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # partial_rotary_factor 0.25 of head_dim 12 is an odd rotary width; 64 / 4 = 16 gives 4.
    "stablelm": {"hidden_size": 64},
    # HeliumAttention's o_proj is Linear(hidden_size, hidden_size): head_dim must be hidden_size // heads.
    "helium": {"head_dim": 12},
    # DeepSeek-V2's group-limited routing needs the group counts its default config leaves None.
    "deepseek_v2": {"n_group": 1, "topk_group": 1},
    # GPT-J and CodeGen rotate the first rotary_dim (default 64) dims of each head: it must fit head_dim.
    "gptj": {"rotary_dim": 8},
    "codegen": {"rotary_dim": 8},
    # Granite divides the logits by logits_scaling (8-16 in released checkpoints; the default 1.0 would hide
    # whether locate's read-out applies it).
    "granite": {"logits_scaling": 4.0},
    "granite_swa": {"logits_scaling": 4.0},
    "granitemoe": {"logits_scaling": 4.0},
    "granitemoe_swa": {"logits_scaling": 4.0},
    "granitemoeshared": {"logits_scaling": 4.0},
}

# Attention classes that mix config.head_dim and hidden_size // heads, so only run when they agree: the tiny
# config gets no head_dim of its own (their recipes derive it, which is exact for every loadable checkpoint).
HEAD_DIM_IS_HIDDEN_OVER_HEADS = {"olmoe", "persimmon", "bitnet"}

# Keys set even where the default config leaves them None (the modeling code then reads the small value).
_SET_WHEN_NONE = {"head_dim", "num_key_value_heads", "num_experts_per_tok"}

# Special-token ids of the full-size vocabulary would fall outside the tiny one.
_TOKEN_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}

# Config attributes that may hold each quantity, in the order a recipe lists them.
LAYER_KEYS = ["num_hidden_layers", "n_layer", "num_layers", "n_layers"]
HEAD_KEYS = ["num_attention_heads", "n_head", "num_heads", "n_heads"]
HIDDEN_KEYS = ["hidden_size", "n_embd", "d_model", "n_embed"]
HEAD_DIM_KEYS = ["head_dim", "v_head_dim", "attention_head_size"]

PROBE_FACTOR = 3.0
PROBE_RTOL = 1e-4


def _shrink(config: Any, sizes: dict[str, Any], depth: int = 0, force_head_dim: bool = True) -> dict[str, Any]:
    """Constructor kwargs for a smaller copy of `config`: its own keys that `sizes` names, sub-configs shrunk."""
    current = config.to_dict()
    kwargs = {
        key: value
        for key, value in sizes.items()
        if key in current and (current[key] is not None or key in _SET_WHEN_NONE)
    }
    if depth == 0 and force_head_dim and "head_dim" not in current and "head_dim" in sizes:
        # Many attention classes read getattr(config, "head_dim", hidden // heads) although the config class
        # declares no head_dim (Qwen2, Qwen3-MoE, Mixtral...), and released checkpoints set it (Qwen3-30B-A3B:
        # 128, not 2048 / 32). Set it anyway: if the model reads it, the probe sees 16, not 12.
        kwargs["head_dim"] = sizes["head_dim"]
    if "qk_rope_head_dim" in current:
        # MLA (DeepSeek-V2/V3): head_dim is derived from the rope/nope split, and keys are not grouped.
        kwargs.pop("head_dim", None)
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", current.get("num_attention_heads"))
    vocab = kwargs.get("vocab_size", current.get("vocab_size"))
    for key, small in _TOKEN_IDS.items():
        value = current.get(key)
        if vocab is not None and (isinstance(value, int) and value >= vocab or isinstance(value, list)):
            kwargs[key] = small
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            # Only the shrunk keys: per-layer lists (layer_types, moe_layers...) are recomputed for the new depth.
            kwargs[key] = _shrink(sub, sizes, depth + 1)
    return kwargs


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """A small config of `model_type` built from its transformers config class (`TINY_SIZES` + `overrides`).

    Raises:
        UnsupportedArchitectureError: transformers does not know `model_type`.
    """
    default = default_config(model_type)
    kwargs = _shrink(default, TINY_SIZES, force_head_dim=model_type not in HEAD_DIM_IS_HIDDEN_OVER_HEADS)
    kwargs |= TINY_OVERRIDES.get(model_type, {}) | overrides
    return type(default)(**kwargs)


def default_config(model_type: str) -> Any:
    """The config class's defaults for `model_type` (the full-size architecture).

    Raises:
        UnsupportedArchitectureError: transformers does not know `model_type`.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type)
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(
            f"transformers {_transformers_version()} has no model_type '{model_type}'", model_type=model_type
        ) from exc


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def tiny_model(config: Any, seed: int = 0) -> Any:
    """A `*ForCausalLM` of `config` (float32, eval), weights redrawn at unit scale so every head matters."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as exc:
        raise UnsupportedArchitectureError(
            f"model_type '{config.model_type}' has no causal-LM class in transformers", model_type=config.model_type
        ) from exc
    model.eval()
    redraw_weights(model)
    return model


def redraw_weights(model: Any) -> None:
    """Re-draw a tiny model's parameters so that every head matters (uses torch's global generator).

    The default init (std 0.02, norms at their constants, zero biases) makes heads nearly silent in a 3-layer
    model, so a wrong head slice would hide under the tolerances: matrices at unit scale per input, and every
    1-d parameter (norms, biases, sinks) perturbed by 0.1.
    """
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
            else:
                param.add_(torch.randn_like(param) * 0.1)


@dataclass(frozen=True)
class Probe:
    """What probing found: the `heads` section of a recipe and the geometry it implies."""

    layers: str
    output_projection: str
    layout: str
    num_layers: int
    num_heads: int
    head_dim: int
    num_layers_keys: list[str]
    num_heads_keys: list[str]
    hidden_size_keys: list[str]
    head_dim_keys: list[str]
    text_prefix: str  # "" or e.g. "model.language_model" when the decoder is nested in a multimodal model
    checkpoint_layers: str | None = None  # the layer list as saved checkpoints spell it, when that differs

    def heads_section(self) -> dict[str, Any]:
        extra = {"checkpoint_layers": self.checkpoint_layers} if self.checkpoint_layers else {}
        return {
            "layers": self.layers,
            **extra,
            "output_projection": self.output_projection,
            "layout": self.layout,
            "num_layers": self.num_layers_keys,
            "num_heads": self.num_heads_keys,
            "hidden_size": self.hidden_size_keys,
            "head_dim": self.head_dim_keys,
        }


def _refuse(model_type: str, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"model_type '{model_type}': {why}", model_type=model_type)


class _ScaleOneHead:
    """An attention function that runs the model's own eager attention and scales one head of one call."""

    def __init__(self) -> None:
        self.target: tuple[int, int] | None = None  # (call index, head)
        self.calls: list[tuple[Any, tuple[int, ...]]] = []  # (module, attn_output shape) per call

    def __call__(self, module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as eager
        out, weights = eager(module, query, key, value, attention_mask, **kwargs)
        index = len(self.calls)
        self.calls.append((module, tuple(out.shape)))
        if self.target is not None and self.target[0] == index:
            out = out.clone()
            out[:, :, self.target[1]] *= PROBE_FACTOR  # attn_output is [batch, seq, heads, head_dim]
        return out, weights


def _linear_inputs(model: Any) -> tuple[dict[str, Any], list[Any]]:
    import torch
    from transformers.pytorch_utils import Conv1D

    seen: dict[str, Any] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, a[0].detach().clone())))
    return seen, handles


def _run(model: Any, ids: Any) -> dict[str, Any]:
    import torch

    seen, handles = _linear_inputs(model)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _config_keys(config: Any, keys: list[str], value: int) -> list[str]:
    return [k for k in keys if getattr(config, k, None) == value]


def probe_model(model: Any, model_type: str | None = None) -> Probe:
    """Find the per-head attention output projection of a loaded `*ForCausalLM` by probing (module docstring).

    Raises:
        UnsupportedArchitectureError: no module's input is the per-head concatenation in every layer, or the
            model does not dispatch through transformers' attention interface.
    """
    import torch
    from transformers import AttentionInterface
    from transformers.pytorch_utils import Conv1D

    model_type = model_type or model.config.model_type
    text_config = model.config.get_text_config(decoder=True)
    fn = _ScaleOneHead()
    AttentionInterface.register("pearzoo_probe", fn)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("pearzoo_probe")
    except (ValueError, AttributeError, KeyError) as exc:
        raise _refuse(model_type, f"its attention does not dispatch through transformers' attention interface ({exc})".splitlines()[0]) from exc
    try:
        ids = torch.randint(0, text_config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        clean = _run(model, ids)
        calls = list(fn.calls)
        if not calls:
            raise _refuse(model_type, "its attention never calls transformers' attention functions, so heads cannot be probed")
        modules = [m for m, _ in calls]
        names = {id(m): n for n, m in model.named_modules()}
        attention_names = [names[id(m)] for m in modules]
        layers_path, layer_count = _layer_list(model, attention_names[0])
        if layers_path is None:
            raise _refuse(model_type, f"attention module {attention_names[0]} is not inside a list of decoder layers")
        if len(calls) != layer_count or len({id(m) for m in modules}) != layer_count:
            raise _refuse(
                model_type,
                f"{len(calls)} attention calls for {layer_count} layers in {layers_path}: "
                "not one attention per layer (hybrid or recurrent layers)",
            )
        found: list[str] = []
        shape = calls[0][1]
        heads, head_dim = shape[2], shape[3]
        for layer in range(layer_count):
            if calls[layer][1][2:] != (heads, head_dim):
                raise _refuse(model_type, f"layer {layer} has a different head layout than layer 0")
            head = layer % heads
            fn.calls.clear()
            fn.target = (layer, head)
            probed = _run(model, ids)
            fn.target = None
            prefix = f"{layers_path}.{layer}."
            matches = [
                name[len(prefix):]
                for name in probed
                if name.startswith(prefix) and _is_head_slice(clean[name], probed[name], head, heads, head_dim)
            ]
            if len(matches) != 1:
                raise _refuse(
                    model_type,
                    f"no single projection in layer {layer} takes the per-head outputs as its input "
                    f"(candidates: {', '.join(matches) or 'none'}): heads are mixed before any projection",
                )
            found.append(matches[0])
        if len(set(found)) != 1:
            raise _refuse(model_type, f"the output projection differs between layers ({', '.join(sorted(set(found)))})")
        projection = model.get_submodule(f"{layers_path}.0.{found[0]}")
        layout = "rows" if isinstance(projection, Conv1D) else "columns"
    finally:
        model.set_attn_implementation(previous)
    hidden = next((getattr(text_config, k) for k in HIDDEN_KEYS if getattr(text_config, k, None)), None)
    head_dim_keys = _config_keys(text_config, HEAD_DIM_KEYS, head_dim)[:1]
    if not head_dim_keys and hidden != heads * head_dim:
        raise _refuse(model_type, f"head_dim {head_dim} is neither a config key nor hidden_size // num_heads")
    layer_keys = _config_keys(text_config, LAYER_KEYS, layer_count)
    head_keys = _config_keys(text_config, HEAD_KEYS, heads)
    if not layer_keys or not head_keys:
        raise _refuse(model_type, "no config key gives the number of layers or heads the model runs")
    # Every key that holds it: config.json spells the raw name (n_embd), the loaded config also the alias.
    hidden_keys = [k for k in HIDDEN_KEYS if getattr(text_config, k, None) == hidden] or ["hidden_size"]
    prefix = _text_prefix(layers_path)
    return Probe(
        layers=layers_path,
        output_projection=found[0],
        layout=layout,
        num_layers=layer_count,
        num_heads=heads,
        head_dim=head_dim,
        num_layers_keys=layer_keys,
        num_heads_keys=head_keys,
        hidden_size_keys=hidden_keys,
        head_dim_keys=head_dim_keys,
        text_prefix=prefix,
    )


def _text_prefix(layers_path: str) -> str:
    return layers_path.rsplit(".", 1)[0] if layers_path.count(".") >= 2 else ""


def _is_head_slice(clean: Any, probed: Any, head: int, heads: int, head_dim: int) -> bool:
    """True when `probed` is `clean` with head `head`'s slice (last axis) times PROBE_FACTOR and nothing else."""
    import torch

    if clean.shape != probed.shape or clean.shape[-1] != heads * head_dim:
        return False
    sl = slice(head * head_dim, (head + 1) * head_dim)
    rest = torch.ones(clean.shape[-1], dtype=torch.bool)
    rest[sl] = False
    if not torch.equal(clean[..., rest], probed[..., rest]):
        return False
    want = clean[..., sl] * PROBE_FACTOR
    scale = want.abs().max().item()
    return scale > 0 and (probed[..., sl] - want).abs().max().item() <= PROBE_RTOL * scale


def _layer_list(model: Any, attention_name: str) -> tuple[str | None, int]:
    """The ModuleList of decoder layers that contains `attention_name` (e.g. `model.layers`), and its length."""
    import torch

    parts = attention_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].isdigit():
            path = ".".join(parts[:i])
            container = model.get_submodule(path)
            if isinstance(container, torch.nn.ModuleList):
                return path, len(container)
    return None, 0


def scaffold_probe(model_type: str, **overrides: Any) -> tuple[Probe, Any]:
    """Probe a tiny random model of `model_type`; returns the probe and the tiny model's config."""
    config = tiny_config(model_type, **overrides)
    model = tiny_model(config)
    return probe_model(model, model_type), config


def check_model_type(model_type: str) -> None:
    if not model_type or any(c in model_type for c in "/\\ ") or model_type.startswith("."):
        raise InvalidInputError(f"'{model_type}' is not a model_type", field="model_type")
