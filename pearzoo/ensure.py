"""Patch a model, building its manifest first when the registry has none that fits (`pearzoo patch --build`).

It sits outside `pearzoo.patch`, which never imports the builder: patching a published manifest needs no
locate or train code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pearzoo.build import ProgressFactory
    from pearzoo.manifest.schema import Manifest
    from pearzoo.patch.api import PatchOptions, PatchResult

Notify = Callable[[str], None]


def ensure_manifest(
    options: PatchOptions,
    *,
    overrides: Sequence[str] = (),
    progress: ProgressFactory | None = None,
    inform: Notify | None = None,
) -> Manifest | None:
    """None when `patch_model(options)` would find a registry manifest for the model; else one built for it.

    Args:
        options (`PatchOptions`): the model, revision, registry and `allow_pickle` are used.
        overrides (`Sequence[str]`): `--set` overrides for the build's recipe (the one that covers the model).
        progress (*optional*): a progress-bar factory for the build's stages.
        inform (*optional*): called with one-line notes (that a build starts, and what it built).

    Returns:
        `Manifest` (sealed, not written anywhere) or None.

    Raises:
        As `build_manifest`, and NotFoundError/OfflineError when the model or the registry cannot be reached.
    """
    from pearzoo.build import BuildOptions, build_manifest
    from pearzoo.patch.api import find_manifest
    from pearzoo.patch.resolve import transformers_twin

    if find_manifest(options.model, options.revision, options.registry) is not None:
        return None
    if inform is not None:
        inform(f"no manifest in the registry fits {options.model}: building one")
    built = build_manifest(
        BuildOptions(
            model=transformers_twin(options.model) or options.model,
            revision=options.revision,
            overrides=list(overrides),
            allow_pickle=options.allow_pickle,
        ),
        progress=progress,
    )
    if inform is not None:
        inform(f"built manifest {built.digest} ({built.recipe.id} {built.recipe.version}, {len(built.heads)} heads)")
    return built


def patch_or_build(
    options: PatchOptions,
    *,
    overrides: Sequence[str] = (),
    progress: ProgressFactory | None = None,
    notify: Notify | None = None,
    inform: Notify | None = None,
) -> PatchResult:
    """`patch_model(options)`, with a manifest built first (`ensure_manifest`) when the registry has none that fits.

    `notify` is passed to `patch_model` (warnings); `inform` receives the build's notes.

    Example:
        >>> result = patch_or_build(PatchOptions(model="org/model", out=Path("model-pear")), overrides=["train.steps=20"])
    """
    from pearzoo.patch.api import patch_model

    built = ensure_manifest(options, overrides=overrides, progress=progress, inform=inform)
    return patch_model(options, manifest=built, progress=progress, notify=notify)
