"""`patch_model`: model + manifest -> a patched copy of the model, with the base verified first.

The flow: resolve the model (`resolve.resolve_source`) and the manifest (`resolve.resolve_manifest`), plan
which tensors the fold touches from the manifest's own recipe settings and the model's config, check
their digests against `manifest.base.tensors`, and write (`write.write_patched`). Bound tensors that are
not folded are checked before writing starts; folded ones as they are read to be folded (one read, one
hash each), with the same error. Either way a wrong base fails the patch and leaves no output.

GGUF files and (with `allow_pickle`) pickle checkpoints have no safetensors to stream: they are loaded
with transformers (GGUF dequantized to the manifest's dtype), verified in memory, saved to a staging
directory beside the target, and patched from there. Memory is then the whole model, not one tensor.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pearzoo.binding import verify_base
from pearzoo.errors import IntegrityError, InvalidInputError, NotFoundError, UnsafeInputError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.resolve import registry_manifest, resolve_manifest, resolve_source, transformers_twin
from pearzoo.patch.write import (
    CONFIG_KEY,
    METADATA_KEY,
    FoldPlan,
    TensorFold,
    clean_stale_temps,
    read_header,
    temp_dir_for,
    write_patched,
)
from pearzoo.source import ModelSource

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Any]
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
Notify = Callable[[str], None]


class PatchOptions(BaseModel):
    """What to patch, with which manifest, and where to write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Local directory, .gguf file, built-in name or Hub id.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    manifest: Path | None = Field(default=None, description="Manifest file to apply. Default: the registry's newest for the model that fits its weights (GGUF or not).")
    registry: str | None = Field(default=None, description="Registry directory or http(s) URL. Default: the registry shipped with pearzoo.")
    out: Path | None = Field(default=None, description="Output directory (a .gguf file under --format gguf). Default: ./<model name>-pear (./<file stem>-pear.gguf).")
    dry_run: bool = Field(default=False, description="Resolve and verify the base weights, write nothing.")
    allow_pickle: bool = Field(default=False, description="Allow .bin/.pt weights (they can run code when loaded).")
    force: bool = Field(default=False, description="Replace an existing output directory.")
    format: Literal["auto", "safetensors", "gguf"] = Field(default="auto", description="Output format: auto follows the source (a GGUF gives a GGUF file, else a safetensors folder).")


class PatchedHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: int
    head: int
    coefficient: float


class PatchResult(BaseModel):
    """What `patch_model` did (or, under `dry_run`, would do)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(description="The model patched (a Meta original-format id is replaced by its twin).")
    requested: str = Field(description="The model reference as given.")
    revision: str | None = Field(description="Resolved Hub commit, where known.")
    source: str = Field(description="directory, gguf, hub or builtin.")
    manifest: str = Field(description="Digest of the manifest applied.")
    recipe: str
    heads: list[PatchedHead]
    tensors: list[str] = Field(description="Tensors folded (their digests matched the manifest's base).")
    shards: int
    out: str | None = Field(description="Output directory (null under dry_run).")
    dry_run: bool
    bytes_written: int
    format: str = Field(default="safetensors", description="safetensors (a folder) or gguf (one file).")
    seconds: float


def patch_model(
    options: PatchOptions,
    *,
    manifest: Manifest | None = None,
    progress: ProgressFactory | None = None,
    notify: Notify | None = None,
) -> PatchResult:
    """Fold a manifest's coefficients into a copy of the model.

    Args:
        options (`PatchOptions`): the model, manifest or registry, output and safety switches.
        manifest (`Manifest`, *optional*): apply this manifest (e.g. one just built) instead of resolving one.
        progress (*optional*): a progress-bar factory `(desc, total) -> bar`.
        notify (*optional*): called with one-line notes for the user (e.g. a Meta id mapped to its twin).

    Returns:
        `PatchResult`.

    Raises:
        NotFoundError: no such model, or no registry manifest that fits its weights (naming the recipe that
            would build one, and what the model's other manifests were built from).
        OfflineError: a Hub model that is not cached while offline; an unreachable registry.
        UnsafeInputError: pickle weights without `allow_pickle`; an id with `..` or an absolute path.
        IntegrityError: the model is not the manifest's base (naming the tensor), is already patched, or a
            manifest fails its digest.
        InvalidInputError: the output exists (without `force`) or overlaps the source.

    Example:
        >>> result = patch_model(PatchOptions(model="smollm2-135m-instruct", out=Path("smollm2-pear")))
        >>> result.tensors[:1]
        ['model.layers.3.self_attn.o_proj.weight']
    """
    start = time.perf_counter()
    twin = transformers_twin(options.model)
    if twin and notify:
        notify(f"{options.model} is in Meta's original format; using its transformers twin {twin}")
    # A Hub model is not downloaded yet: the registry, the recipe and --out are checked first (remote-first).
    source = resolve_source(options.model, options.revision, download=False)
    if source.gguf_file:
        from pearzoo.formats.gguf import check_not_patched

        check_not_patched(source.path / source.gguf_file)
    if manifest is None:
        manifest = resolve_manifest(source, manifest=options.manifest, registry=options.registry)
    if options.format == "gguf" or (options.format == "auto" and source.gguf_file):
        from pearzoo.formats.patch import patch_to_gguf

        return patch_to_gguf(options, source, manifest, progress=progress, start=start)
    if not source.fetched:
        from pearzoo.patch.resolve import fetch_for_patch
        from pearzoo.recipe.load import parse_recipe

        parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
        _target(options, source)
        source = fetch_for_patch(source, manifest)  # the Hub's file digests first, then only the needed files
    out = _target(options, source)

    try:
        if source.gguf_file or not any(source.path.glob("*.safetensors")):
            plan, written = _patch_materialized(source, manifest, options, out, progress)
        else:
            config = _read_config(source.path)
            plan = plan_folds(source.path, config, manifest, model_id=source.model_id)
            verify_plan(plan, manifest, source.model_id, defer_folded=not options.dry_run)
            written = None if options.dry_run else write_patched(plan, manifest, config, out, force=options.force, progress=progress)
    except IntegrityError as exc:
        # A tensor that differs (verify_base records what it expected) from a manifest built from other files of
        # the same model id: the id cannot tell them apart, so the hint names the files.
        if "expected" in exc.context and exc.hint is None:
            exc.hint = _gguf_hint(manifest, source, options.model)
        raise

    return PatchResult(
        model_id=source.model_id,
        requested=options.model,
        revision=source.revision,
        source=source.kind,
        manifest=manifest.digest,
        recipe=f"{manifest.recipe.id} {manifest.recipe.version}",
        heads=[PatchedHead(layer=h.layer, head=h.head, coefficient=h.coefficient) for h in manifest.heads],
        tensors=plan.tensors,
        shards=len(plan.files),
        out=str(out) if written else None,
        dry_run=options.dry_run,
        bytes_written=written.bytes_written if written else 0,
        seconds=round(time.perf_counter() - start, 3),
    )


def _gguf_hint(manifest: Manifest, source: ModelSource, requested: str) -> str | None:
    """For a manifest built from a GGUF file, which other weights of the same model id fail (the Hub's
    safetensors, another quantization): name the file it binds, and how to get a manifest for these weights."""
    from pearzoo.source import BUILTIN_MODELS

    base = manifest.base
    if base.format != "gguf" or source.gguf_file == base.file:
        return None
    builtin = next((n for n, spec in BUILTIN_MODELS.items() if Path(spec["file"]).name == base.file), None)
    origin = f" ({base.origin})" if base.origin else ""
    that = f" (pearzoo patch {builtin})" if builtin else ""
    return (
        f"manifest {manifest.digest[:12]} binds {base.file}{origin} dequantized to {base.dtype}, not these weights: "
        f"patch that file{that}, or build a manifest for these: pearzoo build -m {requested} --out F, then --manifest F"
    )


def find_manifest(model: str, revision: str | None = None, registry: str | Path | None = None) -> Manifest | None:
    """The registry's manifest for a model (as `patch_model` would pick it), or None when none fits its weights.

    Raises:
        NotFoundError, OfflineError: the model or the registry cannot be found or reached.
    """
    return registry_manifest(resolve_source(model, revision, download=False), registry)


def _target(options: PatchOptions, source: ModelSource) -> Path:
    out = (options.out or Path.cwd() / f"{source.model_id.split('/')[-1]}-pear").expanduser().absolute()
    src = source.path.resolve()
    real = out.resolve()
    if real == src or src in real.parents or real in src.parents:
        raise InvalidInputError(f"--out {out} overlaps the source model {src}; choose another directory", path=str(out))
    if not options.dry_run and not options.force and (out.exists() or out.is_symlink()):
        raise InvalidInputError(f"{out} already exists", hint="pass --force to replace it, or choose --out", path=str(out))
    return out


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
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


def plan_folds(directory: Path, config: dict[str, Any], manifest: Manifest, *, model_id: str | None = None) -> FoldPlan:
    """Which stored tensors to fold with which coefficients, from the manifest's recipe and the config.

    `model_id` (default: the manifest's base) names the model in errors.

    Raises:
        IntegrityError: the model's type or head geometry is not the manifest's base, or the manifest does
            not bind a tensor the fold would touch.
    """
    from pearzoo.heads import geometry_from_config
    from pearzoo.recipe.load import parse_recipe
    from pearzoo.shards import Checkpoint

    base = manifest.base
    if config.get("model_type") != base.model_type:
        raise IntegrityError(
            f"{directory} is a '{config.get('model_type')}' model; the manifest is for a '{base.model_type}' model",
            path=str(directory),
        )
    # The manifest carries the recipe it was built with: patch uses that, not whatever the catalog has now.
    recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
    geometry = geometry_from_config(recipe.heads, config)
    g = base.geometry
    if (geometry.num_layers, geometry.num_heads, geometry.head_dim, geometry.layout) != (g.num_layers, g.num_heads, g.head_dim, g.layout):
        raise IntegrityError(
            f"{directory}: head geometry {geometry.num_layers}x{geometry.num_heads}x{geometry.head_dim} ({geometry.layout.value}) "
            f"is not the manifest's {g.num_layers}x{g.num_heads}x{g.head_dim} ({g.layout.value})",
            path=str(directory),
        )
    by_layer: dict[int, dict[int, float]] = defaultdict(dict)
    for h in manifest.heads:
        by_layer[h.layer][h.head] = h.coefficient
    ckpt = Checkpoint(directory)
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
    plan = FoldPlan(directory, ckpt.files, dict(folds), geometry.head_dim, geometry.layout, prefix, model_id or base.model_id)
    for f in plan.files:
        with open(directory / f, "rb") as fh:
            header, _ = read_header(fh, directory / f)
        stamped = (header.get("__metadata__") or {}).get(METADATA_KEY)
        if stamped:
            raise IntegrityError(f"{directory / f} is already patched by pearzoo (manifest {stamped[:12]})", path=str(directory))
    return plan


def verify_plan(plan: FoldPlan, manifest: Manifest, model_id: str, *, defer_folded: bool = False) -> None:
    """Check the digest of every tensor the manifest binds against the files (before anything is written).

    Args:
        defer_folded (`bool`): leave the tensors that the plan folds to `write_patched`, which checks each one
            on the bytes it reads to fold it, with the same error: one read and one hash per folded tensor
            instead of two. A wrong base is then reported when its first folded tensor is reached (the
            partial output is removed), not before writing starts.

    Raises:
        IntegrityError: naming the first tensor that differs or is missing.
    """
    from pearzoo.shards import Checkpoint

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


def _patch_materialized(
    source: ModelSource, manifest: Manifest, options: PatchOptions, out: Path, progress: ProgressFactory | None
) -> tuple[FoldPlan, Any]:
    """GGUF or pickle: load with transformers, verify in memory, save as safetensors to a stage, patch that."""
    from pearzoo.heads import geometry_from_config
    from pearzoo.recipe.load import parse_recipe
    from pearzoo.shards import digest_of, model_tensor
    from pearzoo.source import load_model

    if not source.gguf_file:
        if not any(f.suffix in _PICKLE_SUFFIXES for f in source.path.iterdir()):
            raise NotFoundError(f"{source.path}: no weights (no .safetensors, .bin or .pt files)", path=str(source.path))
        if not options.allow_pickle:
            raise UnsafeInputError(
                f"{source.path}: only pickle weights (.bin/.pt) found; they can run code when loaded",
                hint="pass --allow-pickle if you trust this model",
                path=str(source.path),
            )
        _read_config(source.path)  # refuses an already-patched pickle checkpoint before loading it
    model, tokenizer = load_model(source, dtype=manifest.base.dtype, allow_pickle=options.allow_pickle)
    recipe = parse_recipe(manifest.recipe.settings, source="manifest recipe.settings")
    geometry = geometry_from_config(recipe.heads, model.config)
    names = set(manifest.base.tensors)
    for h in manifest.heads:
        if geometry.tensor_name(h.layer) not in names:
            name = geometry.tensor_name(h.layer)
            raise IntegrityError(f"the manifest does not bind tensor {name} (no digest in base.tensors)", tensor=name)
    actual = {}
    for name in names:
        try:
            actual[name] = digest_of(name, model_tensor(model, name))
        except LookupError:
            continue
    verify_base(manifest.base.tensors, actual, source.model_id)
    if options.dry_run:
        by_layer: dict[int, dict[int, float]] = defaultdict(dict)
        for h in manifest.heads:
            by_layer[h.layer][h.head] = h.coefficient
        in_memory = {
            geometry.tensor_name(layer): TensorFold(geometry.tensor_name(layer), taus, manifest.base.tensors[geometry.tensor_name(layer)])
            for layer, taus in by_layer.items()
        }
        return FoldPlan(source.path, [], {"": in_memory}, geometry.head_dim, geometry.layout), None
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)
    stage = temp_dir_for(out, ".stage")
    try:
        stage_safetensors(model, tokenizer, stage)
        del model
        config = _read_config(stage)
        plan = plan_folds(stage, config, manifest, model_id=source.model_id)
        # What was saved is what was verified: folded tensors are checked again as write_patched reads them.
        verify_plan(plan, manifest, source.model_id, defer_folded=True)
        return plan, write_patched(plan, manifest, config, out, force=options.force, progress=progress)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def stage_safetensors(model: Any, tokenizer: Any, directory: Path, max_shard_size: str = "5GB") -> None:
    """Save a loaded model as a plain safetensors checkpoint (config, shards and index, tokenizer).

    transformers refuses `save_pretrained` for a GGUF-loaded model (its quantizer is not serializable), and
    the dequantized weights are all we need, so the state dict is written here: tied weights once (the
    first name; transformers re-ties them on load), shards as huggingface_hub splits them, and the config
    without its `quantization_config`.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state: dict[str, Any] = {}
    seen: set[tuple[int, Any, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().contiguous()
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = model.config.to_diff_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.to_json_file(str(directory / "generation_config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


__all__ = ["PatchOptions", "PatchResult", "find_manifest", "patch_model", "plan_folds", "verify_plan"]
