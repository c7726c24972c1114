"""Planning a patch: which stored tensors to fold with which coefficients, and what the base must hash to.

Nothing here writes. `plan_folds` reads the config and every shard's header (validated: a truncated or
corrupt shard fails here, before a byte is folded), and checks that the manifest binds each file it will
read (schema 2) and each tensor it will fold. `verify_plan` checks digests up front where the write will
not: under a dry run, or for schema-1 manifests the bound tensors the fold does not touch.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pearzoo.binding import cache_blob_sha256, file_mismatch, verify_base
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.card import CONFIG_KEY
from pearzoo.recipe.schema import Layout

METADATA_KEY = "pearzoo.manifest"
MAX_CONFIG = 16 * 2**20


@dataclass(frozen=True)
class TensorFold:
    """One tensor to fold: the model's name for it (the digest key), its coefficients and expected digest."""

    name: str
    coefficients: Mapping[int, float]
    digest: str


@dataclass(frozen=True)
class FoldPlan:
    """What to write: the source checkpoint, and per shard file the stored tensor names to fold."""

    source_dir: Path
    files: list[str]
    folds: dict[str, dict[str, TensorFold]]  # shard file -> stored tensor name -> fold
    head_dim: int
    layout: Layout
    prefix: str | None = None  # the model's base_model_prefix, which old checkpoints omit from names
    model_id: str | None = None  # named in the error when a folded tensor is not the manifest's base
    # Schema 2: shard file -> the sha256 its bytes must have (every file read is hashed as it is copied).
    file_digests: dict[str, str] | None = None
    bound: dict[str, str] = field(default_factory=dict)  # the manifest's tensor digests, to explain a mismatch

    @property
    def tensors(self) -> list[str]:
        return sorted(f.name for by_name in self.folds.values() for f in by_name.values())

    @property
    def who(self) -> str:
        return self.model_id or str(self.source_dir)


def read_config(directory: Path) -> dict[str, Any]:
    """The model's config.json, refused when it is not a JSON object or says the model is already patched.

    Raises:
        InvalidInputError: unreadable, not JSON, too large, or not an object.
        UnsafeInputError: config.json is a symlink out of the model folder.
        IntegrityError: a `pearzoo` block: the model was patched already (patch the base instead).
    """
    from pearzoo.source import confined

    path = confined(directory, "config.json", what="config")
    try:
        if path.stat().st_size > MAX_CONFIG:
            raise InvalidInputError(f"{path}: too large for a config ({path.stat().st_size} bytes)", path=str(path))
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NotFoundError(f"{directory}: no config.json", path=str(path)) from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{path}: not a readable JSON config", path=str(path)) from exc
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path}: not a JSON object", path=str(path))
    block = config.get(CONFIG_KEY)
    if block is not None:
        digest = block.get("manifest", "?") if isinstance(block, dict) else "?"
        raise IntegrityError(
            f"{directory} is already patched by pearzoo (manifest {str(digest)[:12]}); patch the base model instead",
            path=str(directory),
        )
    return config


def check_geometry(geometry: Any, manifest: Manifest, where: Path) -> None:
    """The model's head geometry must be the one the manifest was built on.

    Raises:
        IntegrityError: naming `where` and both geometries.
    """
    g = manifest.base.geometry
    if (geometry.num_layers, geometry.num_heads, geometry.head_dim, geometry.layout) != (g.num_layers, g.num_heads, g.head_dim, g.layout):
        raise IntegrityError(
            f"{where}: head geometry {geometry.num_layers}x{geometry.num_heads}x{geometry.head_dim} ({geometry.layout.value}) "
            f"is not the manifest's {g.num_layers}x{g.num_heads}x{g.head_dim} ({g.layout.value})",
            path=str(where),
        )


def coefficients_by_layer(manifest: Manifest) -> dict[int, dict[int, float]]:
    """The manifest's coefficients as {layer: {head: tau}}: what one output projection's fold needs."""
    by_layer: dict[int, dict[int, float]] = defaultdict(dict)
    for h in manifest.heads:
        by_layer[h.layer][h.head] = h.coefficient
    return dict(by_layer)


def geometry_of(recipe: Any, config: Mapping[str, Any], where: Path) -> Any:
    """The head geometry from a config.json dict, with a config's wrong types (`"four"` heads) as one line."""
    from pearzoo.heads import geometry_from_config

    try:
        return geometry_from_config(recipe.heads, config)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        if isinstance(exc, InvalidInputError):
            raise InvalidInputError(f"{where}: {exc}", path=str(where)) from exc
        keys = [*recipe.heads.num_layers, *recipe.heads.num_heads, *recipe.heads.head_dim, *recipe.heads.hidden_size]
        bad = next((k for k in keys if k in config and type(config[k]) is not int), "a head geometry key")
        raise InvalidInputError(f"{where}: {bad} must be a whole number, got {str(config.get(bad))[:40]!r}", path=str(where), field=bad) from exc


def plan_folds(
    directory: Path,
    config: dict[str, Any],
    manifest: Manifest,
    *,
    model_id: str | None = None,
    bind_files: bool = True,
) -> FoldPlan:
    """Which stored tensors to fold with which coefficients, from the manifest's recipe and the config.

    `model_id` (default: the manifest's base) names the model in errors. `bind_files` (schema 2) makes the
    plan carry the sha256 every shard must hash to; off for a stage pearzoo wrote itself from a verified load.

    Raises:
        IntegrityError: the model's type or head geometry is not the manifest's base, a shard is truncated or
            corrupt or already patched, a weight file is missing, unbound or (by its Hub cache name) other bytes,
            or the manifest does not bind a tensor the fold would touch.
        UnsafeInputError: a shard name from the index that leaves the model folder.
    """
    from pearzoo.manifest.recorded import recorded_recipe
    from pearzoo.shards import Checkpoint

    base = manifest.base
    who = model_id or base.model_id
    if config.get("model_type") != base.model_type:
        raise IntegrityError(
            f"{directory} is a '{str(config.get('model_type'))[:40]}' model; the manifest is for a '{base.model_type}' model",
            path=str(directory),
        )
    # The manifest carries the recipe it was built with: patch uses that, not whatever the catalog has now.
    recipe = recorded_recipe(manifest)
    geometry = geometry_of(recipe, config, directory / "config.json")
    check_geometry(geometry, manifest, directory)
    by_layer = coefficients_by_layer(manifest)
    ckpt = Checkpoint(directory)  # every shard's header and offsets validated against its size
    # Old checkpoints store names without the base-model prefix (`h.0.attn...` for `transformer.h.0.attn...`);
    # that prefix is the first component of the recipe's layers path (model, transformer, gpt_neox).
    prefix = recipe.heads.layers.split(".")[0]
    folds: dict[str, dict[str, TensorFold]] = defaultdict(dict)
    for layer, coefficients in sorted(by_layer.items()):
        name = geometry.tensor_name(layer)
        if name not in base.tensors:
            raise IntegrityError(f"the manifest does not bind tensor {name} (no digest in base.tensors)", tensor=name)
        stored = ckpt.find(name, prefix)
        folds[ckpt.weight_map[stored]][stored] = TensorFold(name=name, coefficients=coefficients, digest=base.tensors[name])
    for f in ckpt.files:
        stamped = ckpt.layouts[f].metadata.get(METADATA_KEY)
        if stamped:
            raise IntegrityError(f"{directory / f} is already patched by pearzoo (manifest {stamped[:12]})", path=str(directory))
    files = bound_files(directory, ckpt.files, base.files, who) if bind_files and base.files is not None else None
    return FoldPlan(directory, ckpt.files, dict(folds), geometry.head_dim, geometry.layout, prefix, who, files, dict(base.tensors))


def bound_files(directory: Path, files: list[str], expected: Mapping[str, str], who: str) -> dict[str, str]:
    """The sha256 each of `files` must hash to, after checking that the manifest binds exactly these files and
    that none is a huggingface_hub cache blob named by another sha256 (refused before it is read).

    Raises:
        IntegrityError: a bound file is missing, a file is unbound, or a cache blob's name is another sha256.
    """
    for name in sorted(expected):
        if name not in files:
            raise file_mismatch(who, name, expected[name], None)
    for name in files:
        if name not in expected:
            raise IntegrityError(
                f"{who} is not the manifest's base: weight file {name} is not bound by the manifest (no sha256 in base.files)",
                file=name,
            )
        named = cache_blob_sha256(directory / name)
        if named is not None and named != expected[name]:
            raise file_mismatch(who, name, expected[name], named)
    return {name: expected[name] for name in files}


def explain_file_mismatch(plan: FoldPlan, name: str, actual: str) -> IntegrityError:
    """The error for shard `name` hashing to `actual`: naming the first bound tensor in it that differs (read
    again: this is the failure path), else the file."""
    from pearzoo.shards import Checkpoint

    ckpt = Checkpoint(plan.source_dir)
    mine = {}
    for tensor in plan.bound:
        try:
            stored = ckpt.find(tensor, plan.prefix)
        except NotFoundError:
            continue
        if ckpt.weight_map[stored] == name:
            mine[tensor] = ckpt.digest(tensor, plan.prefix)
    try:
        verify_base({t: plan.bound[t] for t in mine}, mine, plan.who)
    except IntegrityError as exc:
        return exc
    return file_mismatch(plan.who, name, (plan.file_digests or {}).get(name, "?"), actual)


def verify_files(plan: FoldPlan) -> None:
    """Hash every shard of a schema-2 plan against the manifest without writing (a dry run reads it all)."""
    from pearzoo.digest import file_digest

    for name, expected in (plan.file_digests or {}).items():
        actual = file_digest(plan.source_dir / name)
        if actual != expected:
            raise explain_file_mismatch(plan, name, actual)


def verify_plan(plan: FoldPlan, manifest: Manifest, model_id: str, *, defer_folded: bool = False) -> None:
    """Check the digests the write will not check, before anything is written.

    Schema 2 (`plan.file_digests`): the write hashes every file as it copies it, so only a dry run
    (`defer_folded` off) hashes them here; the tensor digests follow from the file digests. Schema 1: the
    digest of every bound tensor, except (with `defer_folded`) those the write folds, which it checks on the
    bytes it reads to fold them (one read, one hash per folded tensor).

    Raises:
        IntegrityError: naming the first tensor or file that differs or is missing.
    """
    from pearzoo.shards import Checkpoint

    if plan.file_digests is not None:
        if not defer_folded:
            verify_files(plan)
        return
    folded = {f.name for by_name in plan.folds.values() for f in by_name.values()} if defer_folded else set()
    expected = {name: digest for name, digest in manifest.base.tensors.items() if name not in folded}
    ckpt = Checkpoint(plan.source_dir)
    actual: dict[str, str] = {}
    for name in expected:
        try:
            actual[name] = ckpt.digest(name, plan.prefix)
        except NotFoundError:
            continue  # verify_base reports it as missing, by name
    verify_base(expected, actual, model_id)
