"""Locating suppression heads (spec §2): `locate_heads` scores every head by mean-ablating it at the read-out position.

- `scan`: the per-configuration scan, the batching plan and the typed results;
- `locator`: one configuration's clean run and the single-token ablations that reuse it;
- `prefix_cache`: the clean prefix's cache, shared by the rows of a batch or tiled per row;
- `prescreen`: the optional attribution pre-screen (`locate_heads(..., candidates=M)`).
"""

from pearzoo.locate.scan import ConfigurationResult, LocateResult, locate_heads

__all__ = ["ConfigurationResult", "LocateResult", "locate_heads"]
