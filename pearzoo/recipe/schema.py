"""Recipe models. Strict (`extra="forbid"`) and frozen; the committed JSON Schema is generated from them.

Example (``recipes/rope/llama.yaml``)::

    schema_version: 1
    id: rope/llama
    version: 1.0.0
    description: Llama-family decoders (RoPE).
    position_embedding: rope
    match:
      model_types: [llama]
    heads:
      layers: model.layers
      output_projection: self_attn.o_proj
      layout: columns
      num_layers: [num_hidden_layers]
      num_heads: [num_attention_heads]
      head_dim: [head_dim]
      hidden_size: [hidden_size]
    proxy: {token_range: [3, null], bos: false}
    locate:
      scope: path
      k: 8
      configurations: [{samples: 20, length: 50}, {samples: 40, length: 25}]
    train: {steps: 60, lr: 0.005, batch_size: 8, length: 50}
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

RECIPE_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Layout(str, Enum):
    """How a head's slice sits in the output-projection weight (spec §4)."""

    columns = "columns"  # nn.Linear weight [hidden, heads*head_dim]: head h = columns h*hd:(h+1)*hd
    rows = "rows"  # GPT-2 Conv1D weight [heads*head_dim, hidden]: head h = rows h*hd:(h+1)*hd


class PositionEmbedding(str, Enum):
    rope = "rope"
    alibi = "alibi"
    learned = "learned"


class Scope(str, Enum):
    """Locate scope (spec §2.3)."""

    path = "path"
    total = "total"


ConfigKeys = Annotated[
    list[str],
    Field(min_length=1, description="Config attributes to try in order; the first present and not null wins."),
]


class Match(_Strict):
    """Which models a recipe covers."""

    model_types: list[str] = Field(
        min_length=1, description="Hugging Face `config.model_type` values this recipe covers."
    )
    architectures: list[str] = Field(
        default_factory=list,
        description="Optional `config.architectures` names; when given, one of them must match too.",
    )
    model_ids: list[str] = Field(
        default_factory=list,
        description="Model ids this recipe is tuned for. A recipe with model_ids wins over a generic one "
        "for those ids and is never chosen for others.",
    )


class PositionSwitch(_Strict):
    """For architectures whose position embedding is a config flag (Falcon: `alibi`)."""

    config_key: str = Field(description="Boolean config attribute that selects the position embedding.")
    when_true: PositionEmbedding = Field(description="Position embedding when the flag is true.")
    when_false: PositionEmbedding = Field(description="Position embedding when the flag is false or absent.")


class Heads(_Strict):
    """Where the attention heads sit. Module paths are relative to the `*ForCausalLM` model."""

    layers: str = Field(
        description="Module path of the decoder-layer list, e.g. `model.layers` or `transformer.h`.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
    )
    output_projection: str = Field(
        description="Path of the attention output projection inside one layer, e.g. `self_attn.o_proj`. "
        "Its input is the concatenation of the per-head outputs; its `.weight` is the tensor the fold scales.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
    )
    layout: Layout = Field(description="`columns` for nn.Linear, `rows` for GPT-2's Conv1D (spec §4).")
    num_layers: ConfigKeys = Field(default_factory=lambda: ["num_hidden_layers"])
    num_heads: ConfigKeys = Field(default_factory=lambda: ["num_attention_heads"])
    hidden_size: ConfigKeys = Field(default_factory=lambda: ["hidden_size"])
    head_dim: list[str] = Field(
        default_factory=list,
        description="Config attributes holding head_dim (Gemma, Qwen3 set it apart from hidden/heads; MLA models "
        "name v_head_dim). Empty or all absent: head_dim = hidden_size // num_heads.",
    )
    checkpoint_layers: str | None = Field(
        default=None,
        description="The decoder-layer list as the checkpoint's tensor names spell it, when that differs from the "
        "module path `layers` (Gemma 3 checkpoints store `model.language_model.layers` as "
        "`language_model.model.layers`). Absent: the same as `layers`.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
    )

    @model_serializer(mode="wrap")
    def _omit_absent_checkpoint_layers(self, handler: Any) -> Any:
        # Absent stays absent in a dump, so recipes without it keep the digests their manifests record.
        data = handler(self)
        if self.checkpoint_layers is None and isinstance(data, dict):
            data.pop("checkpoint_layers", None)
        return data


class ProxyTask(_Strict):
    """The random-token copying task (spec §1)."""

    token_range: tuple[int, int | None] = Field(
        default=(0, None),
        description="Half-open range [low, high) of token ids to sample; high null means the vocabulary size. "
        "Special ids inside the range are skipped.",
    )
    bos: bool = Field(default=False, description="Prepend the BOS token to every sequence.")

    @field_validator("token_range")
    @classmethod
    def _range(cls, value: tuple[int, int | None]) -> tuple[int, int | None]:
        low, high = value
        if low < 0:
            raise ValueError("low must be >= 0")
        if high is not None and high <= low + 1:
            raise ValueError("high must exceed low by at least 2")
        return value


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


class LocateConfiguration(_Strict):
    samples: int = Field(ge=2, description="Number of sequences N (the mean ablation needs at least 2).")
    length: int = Field(ge=2, description="Length n of the random sequence; the input is 2n tokens.")


class LocateSpec(_Strict):
    """How suppression heads are located (spec §2)."""

    scope: Scope = Field(default=Scope.path, description="`path` (authors' path patching) or `total` (mean ablation).")
    k: int | str = Field(
        description="Number of suppression heads kept (top-K by averaged relative score): a count (>= 1), or a "
        "percentage of all heads such as `3%` (rounded half up, at least 1), so one recipe fits 135M to 70B "
        "models. A manifest records the resolved count."
    )
    configurations: list[LocateConfiguration] = Field(
        min_length=1,
        default_factory=lambda: [
            LocateConfiguration(samples=20, length=50),
            LocateConfiguration(samples=40, length=25),
            LocateConfiguration(samples=80, length=15),
            LocateConfiguration(samples=100, length=10),
        ],
        description="(samples, length) pairs; scores are averaged over them. Default: the authors' four.",
    )
    @field_validator("k")
    @classmethod
    def _k(cls, value: int | str) -> int | str:
        if isinstance(value, str):
            m = _PERCENT.match(value.strip())
            if not m or not 0 < float(m.group(1)) <= 100:
                raise ValueError("must be a count >= 1 or a percentage in (0%, 100%] such as '3%'")
            return value.strip()
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    def resolve_k(self, total_heads: int) -> int:
        """K for a model with `total_heads` heads: the count itself, or the percentage rounded half up, at least 1."""
        if isinstance(self.k, int):
            return self.k
        fraction = Decimal(self.k[:-1]) * total_heads / 100
        return max(1, int(fraction.to_integral_value(rounding=ROUND_HALF_UP)))

    max_batch_rows: int = Field(
        default=1024, ge=1, description="Upper bound on rows (heads x samples) recomputed in one batch."
    )
    max_cache_gib: float = Field(
        default=2.0, gt=0, description="Upper bound on the tiled prefix cache of one batch, in GiB."
    )


class Preservation(_Strict):
    """Natural-text perplexity budget checked at every validation step (issue #2)."""

    text: str = Field(
        default="builtin:tinyshakespeare-validation",
        description="Held-out natural text: `builtin:<name>` (shipped with pearzoo) or a path to a UTF-8 file.",
    )
    windows: int = Field(default=16, ge=1, description="Number of text windows scored.")
    window_length: int = Field(default=128, ge=8, description="Tokens per window.")
    budget: float = Field(
        default=0.01, ge=0.0, description="Largest allowed relative perplexity increase (0.01 = 1%)."
    )
    weight: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Weight of a natural-text cross-entropy term added to the copy loss during training, on windows of "
            "`text` after the budget windows (never the ones the budget is checked on). 0 = the authors' objective."
        ),
    )
    text_batch: int = Field(default=4, ge=1, description="Text windows per training step when `weight` > 0.")


class TauRange(_Strict):
    """Where a learned coefficient may lie (`low < tau <= high`; `include_low` admits `tau = low`).

    Checked wherever a manifest is read (build, verify, publish, patch). The default (0, 4] refuses a head
    switched off (0) or flipped (< 0): a recipe that means it says so with `low: 0, include_low: true`.
    """

    low: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Lower bound (exclusive unless include_low).")
    high: float = Field(
        default=4.0, gt=0, le=100, allow_inf_nan=False,
        description="Upper bound (inclusive). At most 100: a larger scale of an output projection is a broken build, "
        "and in float16 it approaches overflow.",
    )
    include_low: bool = Field(default=False, description="Also accept tau = low (with low 0: a head switched off).")

    @model_validator(mode="after")
    def _ordered(self) -> "TauRange":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self

    def contains(self, tau: float) -> bool:
        return (self.low <= tau if self.include_low else self.low < tau) and tau <= self.high

    def __str__(self) -> str:
        return f"{'[' if self.include_low else '('}{self.low:g}, {self.high:g}]"


class TrainSpec(_Strict):
    """Coefficient training (spec §3). The model stays frozen; coefficients are float32."""

    steps: int = Field(default=60, ge=0, description="Optimizer steps.")
    lr: float = Field(default=5e-3, gt=0, description="AdamW learning rate (linear decay to 0).")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(default=20, ge=1, description="Sequences per step.")
    length: int = Field(default=50, ge=2, description="Length n of each random sequence (input is 2n tokens).")
    validation_sequences: int = Field(default=64, ge=1, description="Held-out copy sequences for step selection.")
    validate_every: int = Field(default=5, ge=1, description="Validate every this many steps (and at the end).")
    preservation: Preservation = Field(default_factory=Preservation)
    tau_range: TauRange = Field(default_factory=TauRange, description="Bounds every learned coefficient must meet.")
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description=(
            "Arithmetic of the training passes and the validation and perplexity checks (locate and the manifest's "
            "held-out metrics always run in the model's dtype): `bfloat16` runs them under bfloat16 autocast (matrix "
            "products in bfloat16, float32 accumulation; coefficients and optimizer float32); about 1.6x less CPU "
            "time on a CPU with AVX512-BF16, and not bit-identical to `float32` (pearzoo/train_precision.py)."
        ),
    )

    @model_serializer(mode="wrap")
    def _omit_defaults_added_later(self, handler: Any) -> Any:
        # Settings added after manifests were shipped are left out of a dump at their defaults, so recipes that do
        # not set them keep the digests their shipped manifests record; readers of a recorded recipe without them
        # use the same defaults (manifest/bounds.py for tau_range).
        data = handler(self)
        if isinstance(data, dict):
            if self.tau_range == TauRange():
                data.pop("tau_range", None)
            if self.precision == "float32":
                data.pop("precision", None)
        return data

class AuditTolerances(_Strict):
    """How far a rebuild may drift from a published manifest before `pearzoo audit` fails."""

    min_head_overlap: float = Field(default=0.75, ge=0, le=1, description="Fraction of heads shared.")
    min_rank_correlation: float = Field(default=0.9, ge=-1, le=1, description="Spearman rho of scores.")
    max_coefficient_diff: float = Field(default=0.05, ge=0, description="Largest |tau - tau'| on shared heads.")


_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


class Recipe(_Strict):
    """A PEAR recipe: head geometry for an architecture family plus the build settings."""

    schema_version: Literal[1] = Field(description="Recipe schema version; pearzoo refuses unknown versions.")
    id: str = Field(description="`<family>/<name>`, equal to the file's path under recipes/ without `.yaml`.")
    version: str = Field(description="Semantic version of this recipe; bump it when any setting changes.")
    description: str = Field(default="", description="One line for `pearzoo recipes list`.")
    position_embedding: PositionEmbedding = Field(description="Position-embedding family of the architecture.")
    position_switch: PositionSwitch | None = Field(
        default=None, description="Set when a config flag chooses the position embedding (Falcon)."
    )
    match: Match
    heads: Heads
    proxy: ProxyTask = Field(default_factory=ProxyTask)
    locate: LocateSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    audit: AuditTolerances = Field(default_factory=AuditTolerances)
    seed: int = Field(default=0, ge=0, description="Seed for every random draw of a build.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must look like '<family>/<name>' in lower case")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError("must be MAJOR.MINOR.PATCH")
        return value

    def position_family(self, config: Any) -> str:
        """The position-embedding family of a model with this `config`: a switched recipe (`mixed/falcon`)
        covers both, and the model's flag (Falcon's `alibi`, absent = false) says which one it is. `config`:
        a dict or a `PretrainedConfig`, as `recipe_for_config` takes."""
        if self.position_switch is None:
            return self.position_embedding.value
        switch = self.position_switch
        flag = config.get(switch.config_key) if isinstance(config, dict) else getattr(config, switch.config_key, None)
        return (switch.when_true if flag else switch.when_false).value

    @model_validator(mode="after")
    def _family_dir(self) -> "Recipe":
        family = self.id.split("/", 1)[0]
        allowed = {self.position_embedding.value}
        if self.position_switch is not None:
            allowed |= {self.position_switch.when_true.value, self.position_switch.when_false.value, "mixed"}
        if family not in allowed:
            raise ValueError(f"id family '{family}' does not match position_embedding '{self.position_embedding.value}'")
        return self


class UnsupportedEntry(_Strict):
    """model_types pearzoo cannot patch, with the one-line reason `pearzoo build` gives."""

    model_types: list[str] = Field(min_length=1)
    reason: str = Field(min_length=1, description="Why: what the architecture lacks (spec §4).")


class UnsupportedCatalog(_Strict):
    """`recipes/unsupported.yaml`."""

    schema_version: Literal[1]
    unsupported: list[UnsupportedEntry]
