"""pearzoo: PEAR attention re-weighting as a model zoo.

The public API, for scripts (the CLI is a thin layer over the same functions)::

    import pearzoo

    manifest = pearzoo.build_manifest(pearzoo.BuildOptions(model="smollm2-135m-instruct"))
    report = pearzoo.audit_manifest(manifest)

Nothing heavy runs at import: each name below is imported from its module on first use (module
`__getattr__`, PEP 562), so `import pearzoo` loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it. Each module documents its function (Args, Returns, Raises, Example).
_EXPORTS = {
    "build_manifest": "pearzoo.build",
    "BuildOptions": "pearzoo.build",
    "patch_model": "pearzoo.patch.api",
    "PatchOptions": "pearzoo.patch.api",
    "audit_manifest": "pearzoo.audit",
    "evaluate_model": "pearzoo.evaluate",
    "locate_heads": "pearzoo.locate",
    "train_coefficients": "pearzoo.train",
    "Manifest": "pearzoo.manifest.schema",
    "Recipe": "pearzoo.recipe.schema",
    "open_registry": "pearzoo.registry",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pearzoo' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
