"""Fixtures for the patch tests: tiny real checkpoints (single file and sharded), isolated and offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_checkpoints import make_manifest, save_tiny_llama, write_json


@pytest.fixture(scope="session")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model in several shards with a model.safetensors.index.json."""
    return save_tiny_llama(tmp_path_factory.mktemp("sharded") / "tiny-llama", max_shard_size="60KB")


@pytest.fixture
def hub_cache() -> Path:
    """The temporary HF_HUB_CACHE that the root conftest points huggingface_hub at (per test)."""
    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)


@pytest.fixture
def manifest_file(tiny_dir: Path, tmp_path: Path) -> Path:
    return write_json(make_manifest(tiny_dir), tmp_path / "tiny.pear.json")
