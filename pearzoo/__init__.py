"""pearzoo: PEAR attention re-weighting as a model zoo.

Nothing heavy runs at import: torch and transformers are imported by the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
