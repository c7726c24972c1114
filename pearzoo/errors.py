"""The one exception tree. Each class carries an exit code and the context that explains it.

The CLI boundary (`pearzoo.cli.main`) prints ``error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations


class PearzooError(Exception):
    """Root of pearzoo's errors; never raised directly."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, **context: object) -> None:
        super().__init__(message)
        self.hint = hint
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)


class InvalidInputError(PearzooError, ValueError):
    """A recipe, manifest, index, option or head that fails validation."""

    exit_code = 3


class UnsupportedArchitectureError(InvalidInputError):
    """No recipe covers the model's architecture."""


class UnsafeInputError(InvalidInputError):
    """Input that could execute code or escape a directory (pickle weights, `..` in an id)."""


class NotFoundError(PearzooError, LookupError):
    """A model, revision, manifest or recipe that does not exist."""

    exit_code = 4


class IntegrityError(PearzooError):
    """Digest mismatch, tampered file, wrong base weights, already-patched model."""

    exit_code = 5


class ResourceError(PearzooError, OSError):
    """The environment cannot do what was asked (offline, lock timeout, disk)."""

    exit_code = 6


class OfflineError(ResourceError):
    """A download was needed but the network or the Hub is unavailable."""


class LockTimeoutError(ResourceError):
    """A file lock could not be acquired in time."""


class DiskSpaceError(ResourceError):
    """Not enough space to write the output."""


class BudgetError(PearzooError):
    """A build met its acceptance condition in no step (for example the perplexity budget)."""

    exit_code = 7


class DriftError(PearzooError):
    """An audit's rebuild drifted from the manifest beyond the recipe's tolerances."""

    exit_code = 8


def validation_location(exc: Exception) -> tuple[str, str]:
    """`(dotted.field, message)` of the first error of a pydantic `ValidationError`."""
    err = exc.errors()[0]  # type: ignore[attr-defined]
    loc = ".".join(str(part) for part in err["loc"]) or "<root>"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return loc, msg
