"""`pearzoo patch --format gguf`: the glue between `patch.api.patch_model` and `formats.gguf`."""

from __future__ import annotations

import time
from typing import Any

from pearzoo.formats.gguf import gguf_target, patch_gguf, require_gguf_source


def patch_to_gguf(options: Any, source: Any, manifest: Any, *, progress: Any = None, start: float | None = None) -> Any:
    """Fold `manifest` into the GGUF file of `source` and write one GGUF file (see `formats.gguf`).

    Raises:
        InvalidInputError: the source is not a GGUF file; the output is the source, a directory, or exists and
            may not be replaced.
        IntegrityError: a schema-2 manifest that does not bind this GGUF file (or it hashes to another sha256);
            as `formats.gguf.patch_gguf`.
    """
    from pearzoo.patch.api import PatchedHead, PatchResult

    start = time.perf_counter() if start is None else start
    require_gguf_source(source.gguf_file, options.model)
    src = source.path / source.gguf_file
    out = gguf_target(options.out, src, dry_run=options.dry_run, force=options.force)
    bound = None
    if manifest.base.files is not None:  # schema 2: the GGUF file itself is bound, by the name base_files gives it
        from pearzoo.patch.plan import bound_files

        bound = (source.gguf_file, bound_files(source.path, [source.gguf_file], manifest.base.files, source.model_id)[source.gguf_file])
    done = patch_gguf(
        src, manifest, out=out, model_id=source.model_id, dry_run=options.dry_run, force=options.force, progress=progress,
        bound=bound, sign_key=options.sign_key,
    )  # fmt: skip
    signed = done.out is not None and options.sign_key is not None
    return PatchResult(
        model_id=source.model_id,
        requested=options.model,
        revision=source.revision,
        source=source.kind,
        manifest=manifest.digest,
        recipe=f"{manifest.recipe.id} {manifest.recipe.version}",
        heads=[PatchedHead(layer=h.layer, head=h.head, coefficient=h.coefficient) for h in manifest.heads],
        tensors=sorted(t.name for t in done.tensors),
        shards=1,
        out=str(done.out) if done.out else None,
        dry_run=options.dry_run,
        bytes_written=done.bytes_written,
        seconds=round(time.perf_counter() - start, 3),
        format="gguf",
        output_signature=str(done.out.with_name(done.out.name + ".sig")) if signed else None,
    )
