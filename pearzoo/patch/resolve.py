"""What to patch and with which manifest: model reference -> files on disk, and -> the manifest that applies.

Hub ids go through huggingface_hub's `snapshot_download` (`source.resolve_model`), which honours
`HF_HUB_OFFLINE` and the cache; the cache is only read here. Meta's original-format repositories hold
consolidated `.pth` files that transformers cannot load, so their ids are mapped to the transformers
twins Meta publishes beside them (`TRANSFORMERS_TWINS`, data, not code paths).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pearzoo.errors import InvalidInputError, NotFoundError, UnsupportedArchitectureError
from pearzoo.manifest.io import read_manifest
from pearzoo.manifest.schema import Base, Manifest
from pearzoo.source import ModelSource, _hub_call, _offline, resolve_model, validate_hub_id

logger = logging.getLogger(__name__)

# Meta original-format repo id -> the transformers-format repo with the same weights (lower-case keys).
TRANSFORMERS_TWINS: dict[str, str] = {
    "meta-llama/llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "meta-llama/llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "meta-llama/llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "meta-llama/llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "meta-llama/llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "meta-llama/llama-2-70b-chat": "meta-llama/Llama-2-70b-chat-hf",
    "meta-llama/codellama-7b": "meta-llama/CodeLlama-7b-hf",
    "meta-llama/codellama-7b-instruct": "meta-llama/CodeLlama-7b-Instruct-hf",
    "meta-llama/codellama-7b-python": "meta-llama/CodeLlama-7b-Python-hf",
}


def transformers_twin(model: str) -> str | None:
    """The transformers-format twin of a Meta original-format repo id, or None."""
    return TRANSFORMERS_TWINS.get(model.strip().lower())


def resolve_source(model: str, revision: str | None = None, *, download: bool = True) -> ModelSource:
    """Resolve a model reference (directory, `.gguf`, built-in name or Hub id) to files on disk.

    A Meta original-format id is replaced by its transformers twin first (see `transformers_twin`). With
    `download=False` a Hub id is not downloaded: its commit is resolved (`hub_reference`) and `fetch_for_patch`
    downloads it once the manifest and the output are known.

    Raises:
        NotFoundError, OfflineError, UnsafeInputError, InvalidInputError: as `source.resolve_model`.
    """
    twin = transformers_twin(model)
    return resolve_model(twin or model, revision, download=download)


def check_remote_files(source: ModelSource, manifest: Manifest) -> int:
    """Before any download: compare the manifest's weight-file digests (`base.files`, schema 2) with the
    Hub's LFS sha256 of those files at the resolved commit. Offline, or without recorded file digests, there
    is nothing to ask (the files are hashed as they are read). Returns the number of files compared.

    Raises:
        IntegrityError: a file the manifest binds is missing at that commit or has other bytes.
    """
    from pearzoo.errors import IntegrityError

    files: dict[str, str] | None = getattr(manifest.base, "files", None)
    if not files or _offline():
        return 0
    infos = _hub_call(source.model_id, source.revision, lambda api: api.get_paths_info(source.model_id, sorted(files), revision=source.revision))
    remote = {info.path: info for info in infos}
    compared = 0
    at = f" at {source.revision[:12]}" if source.revision else ""
    for name, expected in sorted(files.items()):
        info = remote.get(name)
        if info is None:
            raise IntegrityError(
                f"{source.model_id}{at} is not the manifest's base: it has no {name} (checked before downloading)",
                path=name, expected=expected,
            )  # fmt: skip
        lfs = getattr(info, "lfs", None)
        if lfs is None:
            continue  # a small file in git (no LFS sha256): hashed after download
        if lfs.sha256 != expected:
            raise IntegrityError(
                f"{source.model_id}{at} is not the manifest's base: {name} has sha256 {lfs.sha256[:12]} on the Hub, "
                f"the manifest binds {expected[:12]} (checked before downloading)",
                path=name, expected=expected, actual=lfs.sha256,
            )  # fmt: skip
        compared += 1
    return compared


def fetch_patterns(manifest: Manifest) -> list[str]:
    """What a patch downloads: config, tokenizer and generation files, and the weight files the manifest binds
    (`base.files`; without it, every safetensors file and the index)."""
    from pearzoo.source import HUB_ALLOW_PATTERNS

    files: dict[str, str] | None = getattr(manifest.base, "files", None)
    if not files:
        return list(HUB_ALLOW_PATTERNS)
    weights = {"*.safetensors", "model.safetensors.index.json"}
    return [p for p in HUB_ALLOW_PATTERNS if p not in weights] + ["model.safetensors.index.json"] + sorted(files)


def fetch_for_patch(source: ModelSource, manifest: Manifest) -> ModelSource:
    """Download an unfetched Hub source for patching with `manifest`: remote digests first, only the needed files.

    Raises:
        IntegrityError: as `check_remote_files`.
        NotFoundError, OfflineError: as `source.resolve_model`.
    """
    from pearzoo.source import _hub

    if source.fetched:
        return source
    check_remote_files(source, manifest)
    return _hub(source.model_id, source.revision, allow_patterns=fetch_patterns(manifest))


def resolve_manifest(
    source: ModelSource, *, manifest: str | Path | None = None, registry: str | Path | None = None
) -> Manifest:
    """The manifest to apply to `source`: the pinned file, or the registry's newest that fits its weights.

    A registry manifest fits only weights in the form it was built from (`fits`): a GGUF source takes only
    manifests built from a GGUF (the same file, where the manifest names one), a safetensors or pytorch
    source never takes one built from a GGUF, whose dequantized tensors are other bytes. Among the fitting
    versions of the model, the newest built for the resolved Hub commit wins when the commit is known;
    otherwise the newest. Either way `patch` then checks the tensor digests, so a manifest for other
    weights is refused and leaves no output. A pinned `manifest` is not filtered: the digests decide.

    Raises:
        NotFoundError: the pinned file is missing, or no registry manifest for the model fits these weights
            (the message names the recipe that covers its architecture, so the user can build one, and the
            form the model's other manifests were built from).
        IntegrityError: a manifest fails its digest.
    """
    if manifest is not None:
        return read_manifest(manifest)
    location, found, others = _registry_match(source, registry)
    if found is None:
        raise no_manifest_error(source, location, others)
    return found


def registry_manifest(source: ModelSource, registry: str | Path | None = None) -> Manifest | None:
    """The registry's manifest for `source` (see `resolve_manifest`), or None when none fits its weights."""
    return _registry_match(source, registry)[1]


def fits(base: Base, source: ModelSource) -> bool:
    """Whether a manifest built for `base` can apply to the weights of `source` (same form, same GGUF file)."""
    if source.gguf_file:
        return base.format == "gguf" and base.file in (None, source.gguf_file)
    return base.format != "gguf"


def _registry_match(source: ModelSource, registry: str | Path | None) -> tuple[str, Manifest | None, list[Manifest]]:
    """(registry location, the manifest `resolve_manifest` picks or None, the model's manifests read and
    found not to fit). Manifests are read (each verified) in order of preference until one fits, so the
    usual case reads one and the index format needs no field for the weights' form."""
    from pearzoo.registry import open_registry

    reg = open_registry(registry)
    index = reg.index()  # a missing index or an unreachable registry is an error, not "no manifest"
    try:
        validate_hub_id(source.model_id)
    except InvalidInputError:
        if source.kind == "hub":
            raise
        return reg.location, None, []  # a local directory's name need not be a Hub id; it has no registry entry
    entries = index.versions(source.model_id)
    # Newest first, those built for the resolved commit (when known) ahead of the rest.
    newest_first = entries[::-1]
    same_commit = [e for e in newest_first if source.revision and e.revision == source.revision]
    others: list[Manifest] = []
    for entry in same_commit + [e for e in newest_first if e not in same_commit]:
        candidate = reg.read_manifest(entry)
        if fits(candidate.base, source):
            return reg.location, candidate, others
        others.append(candidate)
    return reg.location, None, others


def model_config(source: ModelSource) -> dict[str, Any]:
    """The model's `config.json` as a dict (GGUF: the config transformers derives from the file; an unfetched Hub
    model: its config.json alone is downloaded)."""
    if not source.fetched:
        return _hub_config(source)
    if source.gguf_file:
        from pearzoo.source import load_config

        return load_config(source).to_dict()
    path = source.path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NotFoundError(f"{source.path}: no config.json", path=str(path)) from exc
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable JSON config", path=str(path)) from exc


def _hub_config(source: ModelSource) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = _hub_call(source.model_id, source.revision, lambda _: hf_hub_download(source.model_id, "config.json", revision=source.revision))
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable JSON config", path=str(path)) from exc


def no_manifest_error(source: ModelSource, registry: str, others: Sequence[Manifest] = ()) -> NotFoundError:
    """'No manifest for X', naming the recipe that covers its architecture (or saying that none does), and,
    when the registry has manifests for X that do not fit these weights, what they were built from."""
    from pearzoo.recipe.catalog import recipe_for_config

    config = model_config(source)
    missing = f"no manifest for '{source.model_id}' in registry {registry}"
    if others:
        n = len(others)
        forms = list(dict.fromkeys(_weights_form(m.base) for m in others))
        missing += (
            f" fits {_source_form(source)}: the registry's {n} manifest{'s' if n > 1 else ''} for it "
            f"{'were' if n > 1 else 'was'} built from {' and '.join(forms)}"
        )
    try:
        recipe, _ = recipe_for_config(config, source.model_id)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{missing}, and {exc}", hint=exc.hint, repo_id=source.model_id) from exc
    return NotFoundError(
        f"{missing}; recipe {recipe.id} {recipe.version} covers its architecture ({config.get('model_type')})",
        hint=f"pass --build to build one with {recipe.id} and patch (minutes on CPU for small models), or --manifest FILE",
        repo_id=source.model_id,
        recipe=recipe.id,
    )


def _weights_form(base: Base) -> str:
    """What a manifest's base weights were: 'the GGUF F (origin)' or 'safetensors weights'."""
    if base.format != "gguf":
        return f"{base.format} weights"
    origin = f" ({base.origin})" if base.origin else ""
    return (f"the GGUF {base.file}" if base.file else "a GGUF file") + origin


def _source_form(source: ModelSource) -> str:
    if source.gguf_file:
        return f"the GGUF {source.gguf_file}"
    if not source.fetched:
        return "its safetensors weights"  # what a patch would download (HUB_ALLOW_PATTERNS)
    return "its safetensors weights" if any(source.path.glob("*.safetensors")) else "its pytorch weights"


def manifest_file(ref: str | Path, registry: str | Path | None = None) -> Path:
    """A manifest file for `ref`: `ref` itself when it is a file (or names a .json), else the newest manifest of
    the model the registry lists under that name (`pearzoo list`; a built-in name maps to its Hub id): the local
    registry's own file, or a verified copy of an HTTP registry's under PEARZOO_HOME/manifests.

    Raises:
        NotFoundError: no such file, and no registry entry under that name.
    """
    from pearzoo import settings
    from pearzoo.manifest.io import write_manifest
    from pearzoo.registry import open_registry
    from pearzoo.registry.local import LocalRegistry
    from pearzoo.source import registry_name

    path = Path(ref).expanduser()
    if path.is_file() or path.suffix.lower() == ".json" or path.is_dir():
        return path
    reg = open_registry(registry)
    details = reg.show(registry_name(str(ref)))
    entry = next(e for e in details.versions if e.digest == details.manifest.digest)
    if isinstance(reg, LocalRegistry):
        return reg.root / entry.path
    return write_manifest(details.manifest, settings.home() / "manifests" / f"{entry.digest}.json")
