"""Coefficient bounds: every tau of a manifest is finite and inside its recipe's `train.tau_range`.

A sealed digest proves a manifest was not edited, not that it is sane: a build (or an author) can seal
tau = 1e39, which folds into +-inf weights. The range is the one the manifest's own recipe settings
declare; manifests built before the field existed get the default (0, 4].
"""

from __future__ import annotations

import math
from typing import Any

from pearzoo.errors import InvalidInputError
from pearzoo.manifest.schema import Manifest


def tau_range_of(settings: Any, *, source: str) -> Any:
    """The `TauRange` a manifest's `recipe.settings` declare (the default when they declare none).

    Raises:
        InvalidInputError: the declared range is malformed (naming `recipe.settings.train.tau_range`).
    """
    from pearzoo.document import validate_into
    from pearzoo.recipe.schema import TauRange

    train = settings.get("train") if isinstance(settings, dict) else None
    declared = train.get("tau_range") if isinstance(train, dict) else None
    if declared is None:
        return TauRange()
    return validate_into(TauRange, declared, source=f"{source}: recipe.settings.train.tau_range")


def check_coefficients(manifest: Manifest, *, source: str) -> None:
    """Refuse a coefficient that is not finite or lies outside the recipe's `train.tau_range`.

    Raises:
        InvalidInputError: naming the file, the head's field and the range.
    """
    bounds = tau_range_of(manifest.recipe.settings, source=source)
    for i, h in enumerate(manifest.heads):
        if not math.isfinite(h.coefficient) or not bounds.contains(h.coefficient):
            raise InvalidInputError(
                f"{source}: heads.{i}.coefficient: {h.coefficient:g} (head {h.layer}.{h.head}) is outside "
                f"{bounds}, the recipe's train.tau_range",
                path=source,
                field=f"heads.{i}.coefficient",
            )
