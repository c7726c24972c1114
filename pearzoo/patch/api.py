"""`patch_model`: model + manifest -> a patched copy of the model, with the base verified first.

The flow: check `--out` (`target.check_out`, before anything is downloaded), resolve the model
(`resolve.resolve_source`) and the manifest (`resolve.resolve_manifest`), plan which tensors the fold
touches and what every file must hash to (`plan.plan_folds`: every shard's header validated first), and
write (`write.write_patched`). A schema-2 manifest binds every weight file: each is hashed as it is
copied. A schema-1 manifest binds only the folded tensors (a warning says so): those are checked as they
are read to be folded, other bound tensors before writing starts. Either way a wrong base fails the
patch and leaves no output.

GGUF files and (with `allow_pickle`) pickle checkpoints have no safetensors to stream (`materialize`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pearzoo.errors import IntegrityError, InvalidInputError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.materialize import patch_materialized, stage_safetensors
from pearzoo.patch.plan import plan_folds, read_config, verify_plan
from pearzoo.patch.resolve import registry_manifest, resolve_manifest, resolve_source, transformers_twin
from pearzoo.patch.target import check_out
from pearzoo.patch.write import write_patched
from pearzoo.source import ModelSource

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int], Any]
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
    force: bool = Field(default=False, description="Replace an existing output directory, if pearzoo wrote it or it is empty.")
    public_keys: list[Path] = Field(default_factory=list, description="Require the manifest to be signed by this EC public key (PEM); repeatable.")
    require_signature: bool | None = Field(default=None, description="Require a signed manifest (default: when --public-key is given or the registry's trust.json requires it).")
    sign_key: Path | None = Field(default=None, description="Sign the output with this EC private key (PEM), as model_signing writes it: OUT/model.sig for a folder, OUT.sig beside a GGUF file.")
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
    signed_by: str | None = Field(default=None, description="Fingerprint of the key whose manifest signature was verified.")
    output_signature: str | None = Field(default=None, description="OUT/model.sig (OUT.sig for a GGUF file), when the output was signed.")


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
        IntegrityError: the model is not the manifest's base (naming the tensor or weight file), is already
            patched, a shard is truncated or corrupt, or a manifest fails its digest.
        InvalidInputError: the output exists (without `force`, or with it but not written by pearzoo), cannot
            be written, or overlaps the source; a fold that overflows the weights' dtype; a malformed config.
        UnsafeInputError: a path from the model's files (index, symlink) that leaves its folder.

    Example:
        >>> result = patch_model(PatchOptions(model="smollm2-135m-instruct", out=Path("smollm2-pear")))
        >>> result.tensors[:1]
        ['model.layers.3.self_attn.o_proj.weight']
    """
    start = time.perf_counter()
    twin = transformers_twin(options.model)
    if twin and notify:
        notify(f"{options.model} is in Meta's original format; using its transformers twin {twin}")
    if options.out is not None and not options.dry_run:
        # A .gguf --out (or --format gguf) is one file: --force replaces it only if pearzoo stamped it.
        file = options.format == "gguf" or (options.format == "auto" and options.out.suffix.lower() == ".gguf")
        if Path(options.model).expanduser().is_file() and Path(options.model).expanduser().resolve() == _out(options, "").resolve():
            raise InvalidInputError(f"--out {_out(options, '')} is the source model; choose another file", path=str(options.out))
        check_out(_out(options, ""), force=options.force, file=file)  # before any download or load
    from pearzoo.trust import check_manifest_signature, check_signing_key, sign_output

    check_signing_key(options.sign_key)
    # A Hub model is not downloaded yet: the registry, the recipe, the signature and --out are checked first.
    source = resolve_source(options.model, options.revision, download=False)
    if source.gguf_file:
        from pearzoo.formats.gguf import check_not_patched

        check_not_patched(source.path / source.gguf_file)
    origin = "memory" if manifest is not None else "file" if options.manifest is not None else "registry"
    if manifest is None:
        manifest = resolve_manifest(source, manifest=options.manifest, registry=options.registry)
    signed_by = check_manifest_signature(
        manifest, origin=origin, manifest_path=options.manifest, registry=options.registry,
        public_keys=options.public_keys, require=options.require_signature, notify=notify,
    )
    if options.format == "gguf" or (options.format == "auto" and source.gguf_file):
        from pearzoo.formats.patch import patch_to_gguf

        done, signature = patch_to_gguf(options, source, manifest, progress=progress)
        _warn_partial_binding(manifest, notify)
        return _result(
            options, source, manifest, start,
            tensors=sorted(t.name for t in done.tensors),
            shards=1,
            out=str(done.out) if done.out else None,
            bytes_written=done.bytes_written,
            format="gguf",
            signed_by=signed_by,
            output_signature=str(signature) if signature else None,
        )
    finish = (lambda folder: sign_output(folder, options.sign_key)) if options.sign_key else None  # noqa: E731
    if not source.fetched:
        from pearzoo.manifest.recorded import recorded_recipe
        from pearzoo.patch.resolve import fetch_for_patch

        recorded_recipe(manifest)
        target = _out(options, source.model_id)
        _check_overlap(target, source)
        if not options.dry_run:
            check_out(target, force=options.force)
        source = fetch_for_patch(source, manifest)  # the Hub's file digests first, then only the needed files
    out = _out(options, source.model_id)
    _check_overlap(out, source)
    if not options.dry_run:
        check_out(out, force=options.force)

    try:
        if source.gguf_file or not any(source.path.glob("*.safetensors")):
            plan, written = patch_materialized(
                source, manifest, out, dry_run=options.dry_run, allow_pickle=options.allow_pickle, force=options.force, progress=progress,
                finish=finish,
            )
        else:
            config = read_config(source.path)
            plan = plan_folds(source.path, config, manifest, model_id=source.model_id)
            verify_plan(plan, manifest, source.model_id, defer_folded=not options.dry_run)
            written = None if options.dry_run else write_patched(plan, manifest, config, out, force=options.force, progress=progress, finish=finish)
    except IntegrityError as exc:
        # A tensor or file that differs (verify_base records what it expected) from a manifest built from other files of
        # the same model id: the id cannot tell them apart, so the hint names the files.
        if "expected" in exc.context and exc.hint is None:
            exc.hint = _gguf_hint(manifest, source, options.model)
        raise

    _warn_partial_binding(manifest, notify)  # said once the patch is done: a failure stays one line
    return _result(
        options, source, manifest, start,
        tensors=plan.tensors,
        shards=len(plan.files),
        out=str(out) if written else None,
        bytes_written=written.bytes_written if written else 0,
        signed_by=signed_by,
        output_signature=str(out / "model.sig") if written and finish else None,
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



def _warn_partial_binding(manifest: Manifest, notify: Callable[[str], None] | None) -> None:
    if manifest.base.files is None and notify:
        notify(
            f"manifest {manifest.digest[:12]} is schema_version {manifest.schema_version}: it binds the base only where "
            f"it folds ({len(manifest.base.tensors)} tensors); the other weights are copied unchecked"
        )


def _result(options: PatchOptions, source: ModelSource, manifest: Manifest, start: float, **written: Any) -> PatchResult:
    """What a patch did: the fields every output format shares, then `written` (tensors, shards, out, ...)."""
    return PatchResult(
        model_id=source.model_id,
        requested=options.model,
        revision=source.revision,
        source=source.kind,
        manifest=manifest.digest,
        recipe=f"{manifest.recipe.id} {manifest.recipe.version}",
        heads=[PatchedHead(layer=h.layer, head=h.head, coefficient=h.coefficient) for h in manifest.heads],
        dry_run=options.dry_run,
        seconds=round(time.perf_counter() - start, 3),
        **written,
    )

def find_manifest(model: str, revision: str | None = None, registry: str | Path | None = None) -> Manifest | None:
    """The registry's manifest for a model (as `patch_model` would pick it), or None when none fits its weights.

    Raises:
        NotFoundError, OfflineError: the model or the registry cannot be found or reached.
    """
    return registry_manifest(resolve_source(model, revision, download=False), registry)


def _out(options: PatchOptions, name: str) -> Path:
    return (options.out or Path.cwd() / f"{name.split('/')[-1]}-pear").expanduser().absolute()


def _check_overlap(out: Path, source: ModelSource) -> None:
    """The output must not be the source, inside it, or hold it (a --force would replace it). For a GGUF the
    source is the file, not its folder: `cd dir; pearzoo patch model.gguf` writes `dir/model-pear`."""
    src = source.weights_path.resolve()
    real = out.resolve()
    inside = src.is_dir() and src in real.parents
    if real == src or inside or real in src.parents:
        raise InvalidInputError(f"--out {out} overlaps the source model {src}; choose another directory", path=str(out))


__all__ = ["PatchOptions", "PatchResult", "find_manifest", "patch_model", "plan_folds", "stage_safetensors", "verify_plan"]
