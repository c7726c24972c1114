"""Write a patched copy of a safetensors checkpoint: streamed, atomic, with provenance.

Every shard is rewritten with the same tensors, order, dtypes, offsets and index as its source. Bytes
of tensors the fold does not touch are copied verbatim in fixed-size chunks, so they stay byte-identical
and memory stays bounded by one folded tensor (an output projection) plus the copy buffer, whatever the
shard size. Only the header's `__metadata__` gains the manifest digest.

Output goes to a temp directory beside the target (named ``.pearzoo-patch-<pid>-<name>``) that is
renamed into place at the end; a failure removes it, and a run that was killed (SIGKILL, power loss)
leaves only that temp directory, which the next patch into the same parent directory removes. Sources
(including the Hugging Face cache, whose snapshot files are symlinks into blobs) are opened read-only,
and files are copied, never hard-linked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pearzoo.errors import DiskSpaceError, InvalidInputError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.card import CARD_NAME, CONFIG_KEY, MANIFEST_NAME, config_block, render_card
from pearzoo.recipe.schema import Layout

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".pearzoo-patch-"
METADATA_KEY = "pearzoo.manifest"
INDEX_NAME = "model.safetensors.index.json"
COPY_CHUNK = 16 * 2**20
_PAGE = 4096
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header

# Weight formats other than safetensors: never copied, or the output would hold unpatched weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl", ".npz", ".ot")
_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-")


@dataclass(frozen=True)
class TensorFold:
    """One tensor to fold: the model's name for it (the digest key), its coefficients and expected digest."""

    name: str
    coefficients: Mapping[int, float]
    digest: str


@dataclass(frozen=True)
class FoldPlan:
    """What to write: the source checkpoint, and per shard file the stored tensor names to fold."""

    source_dir: Path
    files: list[str]
    folds: dict[str, dict[str, TensorFold]]  # shard file -> stored tensor name -> fold
    head_dim: int
    layout: Layout
    prefix: str | None = None  # the model's base_model_prefix, which old checkpoints omit from names
    model_id: str | None = None  # named in the error when a folded tensor is not the manifest's base

    @property
    def tensors(self) -> list[str]:
        return sorted(f.name for by_name in self.folds.values() for f in by_name.values())


@dataclass
class WriteReport:
    out: Path
    shards: int = 0
    bytes_written: int = 0
    copied_files: list[str] = field(default_factory=list)


# --- temp directories ----------------------------------------------------------------------------------


def temp_dir_for(out: Path, suffix: str = "") -> Path:
    """The temp directory for `out`: beside it, so the final rename never crosses a filesystem."""
    return out.parent / f"{TEMP_PREFIX}{os.getpid()}-{out.name}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(parent: Path) -> list[Path]:
    """Remove temp directories in `parent` left by patch runs whose process is gone (killed mid-write)."""
    removed = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        m = _TEMP_RE.match(child.name)
        if m and child.is_dir() and not child.is_symlink() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(child, ignore_errors=True)
            logger.info("removed %s, left by an interrupted patch", child)
            removed.append(child)
    return removed


# --- safetensors streaming -------------------------------------------------------------------------------


def _read_exact(fh: BinaryIO, n: int, path: Path) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = fh.read(left)
        if not chunk:
            raise InvalidInputError(f"{path}: truncated safetensors file", path=str(path))
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_header(fh: BinaryIO, path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data section starts."""
    (size,) = struct.unpack("<Q", _read_exact(fh, 8, path))
    if size > MAX_HEADER:
        raise InvalidInputError(f"{path}: not a safetensors file (header of {size} bytes)", path=str(path))
    try:
        header = json.loads(_read_exact(fh, size, path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not a safetensors file (bad header)", path=str(path)) from exc
    if not isinstance(header, dict):
        raise InvalidInputError(f"{path}: not a safetensors file (bad header)", path=str(path))
    return header, 8 + size


def _encode_header(header: dict[str, Any], data_start: int) -> bytes:
    """Header bytes, padded with spaces (valid JSON whitespace, as safetensors pads) so that the output's data
    section starts at the same offset modulo the page size as the source's: then the kernel can copy the
    untouched bytes page to page, about twice as fast as between misaligned offsets."""
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    data += b" " * ((data_start - 8 - len(data)) % _PAGE)
    return struct.pack("<Q", len(data)) + data


def _copy_range(src: BinaryIO, dst: BinaryIO, length: int, path: Path, update: Callable[[int], Any] | None) -> None:
    """Copy `length` bytes from `src`'s position to `dst`'s (both unbuffered), in the kernel where it can.

    `os.copy_file_range` never passes the bytes through Python; on filesystems with reflinks it may share
    blocks copy-on-write, which is still an independent file (never a hard link). Fallback: read/write.
    """
    kernel = hasattr(os, "copy_file_range")
    while length > 0:
        n = min(COPY_CHUNK, length)
        done = 0
        if kernel:
            try:
                done = os.copy_file_range(src.fileno(), dst.fileno(), n)
            except OSError:
                kernel = False  # e.g. EXDEV or an old kernel: fall through to plain copies
        if not done:
            chunk = src.read(n)
            if not chunk:
                raise InvalidInputError(f"{path}: truncated safetensors file", path=str(path))
            _write_all(dst, chunk)
            done = len(chunk)
        length -= done
        if update:
            update(done)


def _write_all(fh: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _read_into(fh: BinaryIO, view: memoryview, path: Path) -> None:
    while view:
        n = fh.readinto(view)
        if not n:
            raise InvalidInputError(f"{path}: truncated safetensors file", path=str(path))
        view = view[n:]


def _fold_in_place(buf: memoryview, entry: dict[str, Any], fold: TensorFold, plan: FoldPlan, path: Path) -> None:
    """Check the digest of a tensor's bytes in `buf`, then fold them in place (same dtype, same size).

    This is the one read and the one hash of a folded tensor: `verify_plan` leaves folded tensors to this
    check (`defer_folded`), so the bytes verified are the bytes folded, and nothing can change in between.
    """
    import torch

    from pearzoo.binding import verify_base
    from pearzoo.digest import tensor_digest
    from pearzoo.patch.fold import fold_weight_
    from pearzoo.shards import torch_dtype

    dtype, shape = entry["dtype"], entry["shape"]
    actual = tensor_digest(fold.name, dtype, shape, buf)
    if actual != fold.digest:  # the same error, naming the tensor, as verify_plan's
        verify_base({fold.name: fold.digest}, {fold.name: actual}, plan.model_id or str(plan.source_dir))
    torch_type = torch_dtype(dtype)
    if torch_type is None or not torch_type.is_floating_point:
        raise InvalidInputError(f"{path}: tensor {fold.name} has dtype {dtype}; only float weights can be folded")
    if math.prod(shape) * torch_type.itemsize != len(buf):
        raise InvalidInputError(f"{path}: tensor {fold.name} has invalid data offsets", path=str(path))
    if buf:  # a view of the buffer, not a copy: the fold changes the bytes that are then written out
        fold_weight_(torch.frombuffer(buf, dtype=torch_type).reshape(shape), fold.coefficients, plan.head_dim, plan.layout)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread. A fold touches a few head slices (a millisecond on one core); with
    OpenMP's default of one thread per core, each small op waits on a barrier, which costs tens of
    milliseconds per tensor whenever another process holds a core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_shard(
    src: Path,
    dst: Path,
    folds: Mapping[str, TensorFold],
    plan: FoldPlan,
    metadata: Mapping[str, str],
    update: Callable[[int], Any] | None = None,
) -> int:
    """Copy one safetensors file to `dst`, folding the tensors in `folds`; returns the bytes written.

    Untouched byte ranges go file to file in the kernel (`_copy_range`). Each folded tensor is read once into
    one reused buffer, checked against its digest, folded in place and written from that same buffer.
    """
    # Unbuffered on both sides: the kernel copies between the two file positions.
    with open(src, "rb", buffering=0) as fin:
        header, data_start = read_header(fin, src)
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        missing = sorted(set(folds) - set(entries))
        if missing:
            raise InvalidInputError(f"{src}: tensor {missing[0]} is not in this shard, as its index says")
        out_header = dict(header)
        out_header["__metadata__"] = {**(header.get("__metadata__") or {}), **metadata}
        encoded = _encode_header(out_header, data_start)
        data_len = os.fstat(fin.fileno()).st_size - data_start
        ranges = []
        for name in folds:
            begin, end = entries[name].get("data_offsets") or (None, None)
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
                raise InvalidInputError(f"{src}: tensor {name} has invalid data offsets", path=str(src))
            ranges.append((begin, end, name))
        ranges.sort()
        buffer = bytearray(max((end - begin for begin, end, _ in ranges), default=0))
        with open(dst, "xb", buffering=0) as fout, _one_torch_thread():
            _write_all(fout, encoded)
            pos = 0
            for begin, end, name in ranges:
                if begin < pos:
                    raise InvalidInputError(f"{src}: tensor {name} has invalid data offsets", path=str(src))
                _copy_range(fin, fout, begin - pos, src, update)
                view = memoryview(buffer)[: end - begin]
                _read_into(fin, view, src)
                _fold_in_place(view, entries[name], folds[name], plan, src)
                _write_all(fout, view)
                if update:
                    update(end - begin)
                pos = end
            _copy_range(fin, fout, data_len - pos, src, update)
            os.fsync(fout.fileno())
    return len(encoded) + data_len


# --- the whole directory ---------------------------------------------------------------------------------


def _copy_plain_files(source_dir: Path, tmp: Path, config: dict[str, Any]) -> list[str]:
    copied = []
    for path in sorted(source_dir.iterdir()):
        name = path.name
        if name.startswith(".") or not path.is_file() or name in {CARD_NAME, "config.json", MANIFEST_NAME}:
            continue
        if name.lower().endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copyfile(path, tmp / name)  # follows the cache's symlinks; copies bytes, never links
        copied.append(name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return copied


def write_patched(
    plan: FoldPlan,
    manifest: Manifest,
    config: dict[str, Any],
    out: Path,
    *,
    force: bool = False,
    progress: Callable[[str, int], Any] | None = None,
    finish: Callable[[Path], Any] | None = None,
) -> WriteReport:
    """Write the patched model to `out`, atomically.

    Args:
        plan (`FoldPlan`): source checkpoint and the tensors to fold (digests already verified).
        manifest (`Manifest`): recorded in every shard's metadata, `config.json`, the card and `pearzoo.manifest.json`.
        config (`dict`): the source `config.json`; a `pearzoo` block is added.
        out (`Path`): target directory; must not exist unless `force`.
        force (`bool`): replace an existing `out` (only once the new copy is complete).
        progress (*optional*): a progress-bar factory `(desc, total) -> bar`.
        finish (*optional*): called with the complete temp folder just before its rename (e.g. to sign it).

    Raises:
        DiskSpaceError: the disk filled up (nothing is left behind).
        IntegrityError: a folded tensor is not the manifest's base (checked on the bytes read to fold it).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)
    tmp = temp_dir_for(out)
    report = WriteReport(out=out)
    sizes = {f: (plan.source_dir / f).stat().st_size for f in plan.files}
    bar = progress("patch", sum(sizes.values())) if progress else None
    try:
        tmp.mkdir()
        metadata = {METADATA_KEY: manifest.digest}
        for name in plan.files:
            report.bytes_written += write_shard(
                plan.source_dir / name, tmp / name, plan.folds.get(name, {}), plan, metadata, bar.update if bar else None
            )
            report.shards += 1
        report.copied_files = _copy_plain_files(plan.source_dir, tmp, {**config, CONFIG_KEY: config_block(manifest)})
        # exclude_unset: the document as it was sealed (a default-valued key that was absent stays absent),
        # so the copy still matches its digest.
        document = manifest.model_dump(mode="json", exclude_unset=True)
        (tmp / MANIFEST_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(render_card(manifest, plan.source_dir), encoding="utf-8")
        if finish is not None:
            finish(tmp)
        _fsync_dir(tmp)
        _move_into_place(tmp, out, force)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DiskSpaceError(f"{out.parent}: no space left while writing the patched model", path=str(out)) from exc
        raise
    finally:
        if bar:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    if not force:
        raise InvalidInputError(f"{out} already exists", hint="pass --force to replace it, or choose --out", path=str(out))
    old = temp_dir_for(out, ".old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

