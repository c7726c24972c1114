"""Environment variables and defaults. Read by functions at call time, never at import."""

from __future__ import annotations

import os
from pathlib import Path

PEARZOO_HOME = "PEARZOO_HOME"
PEARZOO_REGISTRY = "PEARZOO_REGISTRY"
PEARZOO_DEBUG = "PEARZOO_DEBUG"


def home() -> Path:
    """Directory for pearzoo's own caches (converted models, build scratch)."""
    value = os.environ.get(PEARZOO_HOME)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pearzoo"


def debug() -> bool:
    return os.environ.get(PEARZOO_DEBUG, "").lower() in {"1", "true", "yes", "on"}


def registry() -> str | None:
    return os.environ.get(PEARZOO_REGISTRY) or None
