"""Fixtures for the format tests (GGUF out, PEFT export, names, remote-first patch)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def hub_cache() -> Path:
    """The temporary HF_HUB_CACHE that the root conftest points huggingface_hub at (per test)."""
    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)
