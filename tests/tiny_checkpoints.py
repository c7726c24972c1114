"""Tiny real checkpoints, hand-made manifests and a loopback HTTP server, for the patch and registry tests.

Manifests here are built without training: the document is written by hand (heads and coefficients),
bound to the checkpoint with `binding.base_digests`, sealed with `manifest.io.seal` and validated with
`Manifest.model_validate`, so they are exactly what `pearzoo build` would emit for those coefficients.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

# Not a tolerance (those are in tests/_tolerances.py): a floor that keeps an identity patch from passing.
MIN_EFFECT = 1e-2  # the patched logits must differ from the base model's by more than this
STORIES_DIR = Path(__file__).resolve().parents[1] / "data" / "llama2c-stories260K"
HEADS: dict[tuple[int, int], float] = {(0, 1): 0.5, (1, 2): 1.75, (1, 3): 0.25}


def tiny_llama(seed: int = 0) -> Any:
    """A random LlamaForCausalLM: 2 layers, hidden 64, 4 query heads (GQA, 2 KV heads), vocab 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    # transformers initialises with std 0.02: logits would barely move. Wider weights make the fold visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def save_tiny_llama(directory: Path, *, seed: int = 0, max_shard_size: str | None = None) -> Path:
    model = tiny_llama(seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}) + "\n")
    return directory


def stories260k(directory: Path) -> Path:
    """llama2.c's stories260K converted to a transformers Llama directory (a real trained model)."""
    from llama2c import convert_llama2c

    convert_llama2c(STORIES_DIR / "stories260K.bin", STORIES_DIR / "tok512.bin", directory)
    return directory


def make_manifest(
    model_dir: Path,
    heads: Mapping[tuple[int, int], float] = HEADS,
    *,
    model_id: str = "pearzoo-test/tiny-llama",
    revision: str | None = None,
    base_format: str = "safetensors",
    file: str | None = None,
    origin: str | None = None,
    schema_version: int = 2,
) -> dict[str, Any]:
    """A sealed, valid manifest document for the checkpoint in `model_dir` (recipe rope/llama 1.0.0).

    `base_format`, `file` and `origin` record another form of the same weights (e.g. "gguf" and a file name)
    in `base`, for the tests of which sources a manifest fits; the digests stay those of `model_dir`.
    Schema 2 (the default) binds every weight file (`binding.base_files`); schema 1 only the folded tensors."""
    from transformers import AutoConfig

    from pearzoo.binding import base_digests, base_files
    from pearzoo.heads import geometry_from_config
    from pearzoo.recipe.catalog import get_recipe
    from pearzoo.source import ModelSource

    recipe, _ = get_recipe("rope/llama")
    config = AutoConfig.from_pretrained(model_dir)
    geometry = geometry_from_config(recipe.heads, config)
    source = ModelSource(kind="directory", path=Path(model_dir), model_id=model_id, revision=revision)
    prefix_holder = type("Prefix", (), {"base_model_prefix": "model"})()
    tensors = base_digests(source, prefix_holder, {geometry.tensor_name(layer) for layer, _ in heads})
    files = base_files(source) if schema_version >= 2 else None
    return manifest_document(
        config, tensors, heads, model_id=model_id, revision=revision, base_format=base_format, file=file, origin=origin,
        files=files,
    )  # fmt: skip


def manifest_document(
    config: Any,
    tensors: dict[str, str],
    heads: Mapping[tuple[int, int], float],
    *,
    model_id: str,
    revision: str | None = None,
    recipe_id: str = "rope/llama",
    base_format: str = "safetensors",
    file: str | None = None,
    origin: str | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Seal and validate a manifest for a model config, its bound tensor digests and the given coefficients.

    With `files` (sha256 of every weight file) it is a schema-2 manifest, else schema 1."""
    from pearzoo.heads import geometry_from_config
    from pearzoo.manifest.io import seal
    from pearzoo.manifest.schema import Manifest
    from pearzoo.recipe.catalog import get_recipe
    from pearzoo.recipe.load import recipe_digest

    recipe, _ = get_recipe(recipe_id)
    geometry = geometry_from_config(recipe.heads, config)
    document = {
        "schema_version": 2 if files is not None else 1,
        "base": {
            "model_id": model_id,
            "revision": revision,
            "format": base_format,
            **({"file": file} if file else {}),
            **({"origin": origin} if origin else {}),
            "model_type": config.model_type,
            "architectures": list(config.architectures or []),
            "dtype": "float32",
            "geometry": {
                "num_layers": geometry.num_layers,
                "num_heads": geometry.num_heads,
                "head_dim": geometry.head_dim,
                "layout": geometry.layout.value,
            },
            "tensors": tensors,
            **({"files": files} if files is not None else {}),
        },
        "recipe": {
            "id": recipe.id,
            "version": recipe.version,
            "digest": recipe_digest(recipe),
            "overrides": [],
            "settings": recipe.model_dump(mode="json"),
        },
        "locate": {"scope": "path", "k": len(heads), "configurations": [{"samples": 4, "length": 8, "clean_metric": 0.5}]},
        "heads": [
            {"layer": layer, "head": head, "score": -0.1 * (i + 1), "delta": -0.01 * (i + 1), "coefficient": tau}
            for i, ((layer, head), tau) in enumerate(heads.items())
        ],
        "metrics": {
            "copy_length": 8,
            "copy_sequences": 4,
            "copy_before": {"accuracy": 0.25, "loss": 3.0},
            "copy_after": {"accuracy": 0.5, "loss": 2.5},
            "perplexity_text": None,
            "perplexity_before": None,
            "perplexity_after": None,
            "perplexity_budget": 0.01,
            "best_step": 1,
            "steps": 2,
            "history": [],
        },
        "build": {
            "pearzoo": "0.1.0", "torch": torch.__version__, "transformers": "5", "python": "3.11", "device": "cpu",
            "dtype": "float32", "seed": 0, "seconds": {"total": 0.0},
        },  # fmt: skip
    }
    sealed = seal(document)
    Manifest.model_validate(sealed)
    return sealed


def write_json(document: Any, path: Path) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def tamper(document: dict[str, Any], coefficient: float = 0.9) -> dict[str, Any]:
    """The same manifest with one coefficient changed and the recorded digest kept."""
    changed = json.loads(json.dumps(document))
    changed["heads"][0]["coefficient"] = coefficient
    return changed


def runtime_logits(model_dir: Path, heads: Mapping[tuple[int, int], float], ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base logits, logits with the coefficients applied by runtime hooks) for the model in `model_dir`."""
    from transformers import AutoModelForCausalLM

    from pearzoo.heads import HeadId, geometry_from_config
    from pearzoo.hooks import scale_heads
    from pearzoo.recipe.catalog import get_recipe

    recipe, _ = get_recipe("rope/llama")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    geometry = geometry_from_config(recipe.heads, model.config)
    with torch.no_grad():
        base = model(ids).logits
        with scale_heads(model, geometry, {HeadId(l, h): tau for (l, h), tau in heads.items()}):
            hooked = model(ids).logits
    return base, hooked


def load_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def tree_state(root: Path) -> dict[str, tuple[str, int, str | None]]:
    """path -> (sha256, mtime_ns, symlink target) for every file and link under `root` (links not followed
    for the mtime), to show that a directory was left untouched."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path.is_dir() and not path.is_symlink():
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "dangling"
            target = os.readlink(path) if path.is_symlink() else None
            state[str(path.relative_to(root))] = (digest, path.lstat().st_mtime_ns, target)
    return state


def hub_cache_layout(
    cache: Path, repo_id: str, model_dir: Path, commit: str = "0123456789abcdef0123456789abcdef01234567", *, refs: bool = True
) -> Path:
    """Lay `model_dir` out in a Hugging Face cache as huggingface_hub stores it: blobs named by sha256,
    snapshot symlinks into them, and (with `refs`) refs/main naming the commit. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha).write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / sha)
    if refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` as static files on loopback (port 0); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/registry/"
