"""Manifest registries: a directory, a git checkout or static HTTP, all read the same way.

Example:
    >>> from pearzoo.registry import open_registry
    >>> registry = open_registry("https://example.org/pearzoo-registry")
    >>> [m.model_id for m in registry.list_models()]
"""

from __future__ import annotations

from pathlib import Path

from pearzoo.registry.base import Index, IndexEntry, ModelDetails, ModelSummary, Registry

__all__ = [
    "Index",
    "IndexEntry",
    "ModelDetails",
    "ModelSummary",
    "Registry",
    "builtin_registry_dir",
    "default_registry_location",
    "open_registry",
]


def builtin_registry_dir() -> Path:
    """The registry shipped with pearzoo (inside the wheel, or the repo's `registry/` in a checkout)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_registry"
    if packaged.is_dir():
        return packaged
    return here.parent / "registry"


def default_registry_location() -> str:
    """`PEARZOO_REGISTRY` if set, else the built-in registry (read at call time)."""
    from pearzoo import settings

    return settings.registry() or str(builtin_registry_dir())


def open_registry(location: str | Path | None = None) -> Registry:
    """Open a registry by path or URL.

    Args:
        location (`str` or `Path`, *optional*): a directory, a `file://` URL, or an `http(s)://` URL.
            Default: `PEARZOO_REGISTRY`, else the built-in registry.

    Returns:
        `Registry`: `HttpRegistry` for http(s) URLs (read-only), `LocalRegistry` otherwise.
    """
    from urllib.parse import unquote, urlparse

    text = str(location) if location is not None else default_registry_location()
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        from pearzoo.registry.http import HttpRegistry

        return HttpRegistry(text)
    from pearzoo.registry.local import LocalRegistry

    if scheme == "file":
        return LocalRegistry(unquote(urlparse(text).path))
    return LocalRegistry(text)
