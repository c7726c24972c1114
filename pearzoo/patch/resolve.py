"""What to patch and with which manifest: model reference -> files on disk, and -> the manifest that applies.

Hub ids go through huggingface_hub's `snapshot_download` (`source.resolve_model`), which honours
`HF_HUB_OFFLINE` and the cache; the cache is only read here. Meta's original-format repositories hold
consolidated `.pth` files that transformers cannot load, so their ids are mapped to the transformers
twins Meta publishes beside them (`TRANSFORMERS_TWINS`, data, not code paths).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pearzoo.errors import InvalidInputError, NotFoundError, UnsupportedArchitectureError
from pearzoo.manifest.io import read_manifest
from pearzoo.manifest.schema import Manifest
from pearzoo.source import ModelSource, resolve_model, validate_hub_id

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


def resolve_source(model: str, revision: str | None = None) -> ModelSource:
    """Resolve a model reference (directory, `.gguf`, built-in name or Hub id) to files on disk.

    A Meta original-format id is replaced by its transformers twin first (see `transformers_twin`).

    Raises:
        NotFoundError, OfflineError, UnsafeInputError, InvalidInputError: as `source.resolve_model`.
    """
    twin = transformers_twin(model)
    return resolve_model(twin or model, revision)


def resolve_manifest(
    source: ModelSource, *, manifest: str | Path | None = None, registry: str | Path | None = None
) -> Manifest:
    """The manifest to apply to `source`: the pinned file, or the newest for the model in the registry.

    Among a model's registry versions, the newest built for the resolved Hub commit wins when the commit is
    known; otherwise the newest. Either way `patch` then checks the tensor digests, so a manifest for other
    weights is refused and leaves no output.

    Raises:
        NotFoundError: the pinned file is missing, or the registry has no manifest for the model (the
            message names the recipe that covers its architecture, so the user can build one).
        IntegrityError: a manifest fails its digest.
    """
    if manifest is not None:
        return read_manifest(manifest)
    found = registry_manifest(source, registry)
    if found is None:
        from pearzoo.registry import open_registry

        raise no_manifest_error(source, open_registry(registry).location)
    return found


def registry_manifest(source: ModelSource, registry: str | Path | None = None) -> Manifest | None:
    """The registry's manifest for `source` (see `resolve_manifest`), or None when it has none."""
    from pearzoo.registry import open_registry

    reg = open_registry(registry)
    index = reg.index()  # a missing index or an unreachable registry is an error, not "no manifest"
    try:
        validate_hub_id(source.model_id)
    except InvalidInputError:
        if source.kind == "hub":
            raise
        return None  # a local directory's name need not be a Hub id; it simply has no registry entry
    entries = index.versions(source.model_id)
    if not entries:
        return None
    chosen = entries[-1]
    if source.revision:
        same_commit = [e for e in entries if e.revision == source.revision]
        if same_commit:
            chosen = same_commit[-1]
    return reg.read_manifest(chosen)


def model_config(source: ModelSource) -> dict[str, Any]:
    """The model's `config.json` as a dict (GGUF: the config transformers derives from the file)."""
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


def no_manifest_error(source: ModelSource, registry: str) -> NotFoundError:
    """'No manifest for X', naming the recipe that covers its architecture (or saying that none does)."""
    from pearzoo.recipe.catalog import recipe_for_config

    config = model_config(source)
    try:
        recipe, _ = recipe_for_config(config, source.model_id)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(
            f"no manifest for '{source.model_id}' in registry {registry}, and {exc}",
            hint=exc.hint,
            repo_id=source.model_id,
        ) from exc
    return NotFoundError(
        f"no manifest for '{source.model_id}' in registry {registry}; recipe {recipe.id} {recipe.version} "
        f"covers its architecture ({config.get('model_type')})",
        hint=f"pass --build to build one with {recipe.id} and patch (minutes on CPU for small models), or --manifest FILE",
        repo_id=source.model_id,
        recipe=recipe.id,
    )
