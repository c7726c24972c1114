"""`pearzoo patch --format gguf`: the glue between `patch.api.patch_model` and `formats.gguf` (which builds the
`PatchResult` from what this returns, so neither module imports the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pearzoo.formats.gguf import GGUFPatch, gguf_target, patch_gguf, require_gguf_source


def patch_to_gguf(options: Any, source: Any, manifest: Any, *, progress: Any = None) -> tuple[GGUFPatch, Path | None]:
    """Fold `manifest` into the GGUF file of `source` and write one GGUF file (see `formats.gguf`).

    Returns:
        The patch done, and the output's signature (`OUT.sig`) when `options.sign_key` signed it.

    Raises:
        InvalidInputError: the source is not a GGUF file; the output is the source, a directory, or exists and
            may not be replaced.
        IntegrityError: a schema-2 manifest that does not bind this GGUF file (or it hashes to another sha256);
            as `formats.gguf.patch_gguf`.
    """
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
    return done, done.out.with_name(done.out.name + ".sig") if signed else None
