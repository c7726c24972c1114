"""Coefficient manifests: the output of `pearzoo build`, bound to the base weights by digest."""

from pearzoo.manifest.schema import MANIFEST_SCHEMA_VERSION, Manifest

__all__ = ["MANIFEST_SCHEMA_VERSION", "Manifest"]
