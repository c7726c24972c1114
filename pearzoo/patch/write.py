"""Write a patched copy of a safetensors checkpoint: streamed, hashed, atomic, with provenance.

Every shard is rewritten with the same tensors, order, dtypes, offsets and index as its source. Bytes of
tensors the fold does not touch are copied verbatim in fixed-size chunks, so they stay byte-identical and
memory stays bounded by one folded tensor (an output projection) plus the copy buffers, whatever the shard
size. Only the header's `__metadata__` gains the manifest digest.

Schema-2 manifests bind every weight file by sha256: each source byte is hashed as it is copied (read
once into a buffer, hashed on a worker thread while the main thread writes it: hashlib releases the GIL),
and a file that does not hash to the manifest's digest fails the patch. Schema 1 binds only the folded
tensors; untouched bytes then go file to file in the kernel (`os.copy_file_range`).

Output goes to a temp folder beside the target (`target.RunTemp`), is re-validated (every output shard's
header and offsets against its size, the same tensors as its source) and then renamed into place. A
failure removes it; a killed run leaves only that folder, which the next patch into the same parent removes
once the dead run's lock is free. Sources (including the Hugging Face cache, whose snapshot files are
symlinks into blobs) are opened read-only, and files are copied, never hard-linked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pearzoo.errors import IntegrityError, InvalidInputError, PearzooError
from pearzoo.manifest.schema import Manifest
from pearzoo.patch.card import CARD_NAME, CONFIG_KEY, MANIFEST_NAME, config_block, render_card
from pearzoo.patch.plan import METADATA_KEY, FoldPlan, TensorFold, explain_file_mismatch
from pearzoo.patch.target import TEMP_PREFIX, RunTemp, fsync_dir, move_into_place, write_error
from pearzoo.shards import INDEX_NAME, Layout, read_file_layout, read_layout

logger = logging.getLogger(__name__)

COPY_CHUNK = 2**20  # 1 MiB: measured ~10x cheaper per byte than 8 MiB writes into the page cache (ext4)
_PAGE = 4096

# Weight formats other than safetensors: never copied, or the output would hold unpatched weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl", ".npz", ".ot")

__all__ = [
    "CONFIG_KEY", "INDEX_NAME", "MANIFEST_NAME", "METADATA_KEY", "TEMP_PREFIX", "FoldPlan", "TensorFold",
    "WriteReport", "write_patched", "write_shard",
]  # fmt: skip


@dataclass
class WriteReport:
    out: Path
    shards: int = 0
    bytes_written: int = 0
    copied_files: list[str] = field(default_factory=list)


def _encode_header(header: dict[str, Any], data_start: int) -> bytes:
    """Header bytes, padded with spaces (valid JSON whitespace, as safetensors pads) so that the output's data
    section starts at the same offset modulo the page size as the source's: then the kernel can copy the
    untouched bytes page to page, about twice as fast as between misaligned offsets."""
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    data += b" " * ((data_start - 8 - len(data)) % _PAGE)
    return struct.pack("<Q", len(data)) + data


def _write_all(fh: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _read_into(fh: BinaryIO, view: memoryview, path: Path) -> None:
    while view:
        n = fh.readinto(view)
        if not n:
            raise IntegrityError(f"{path}: truncated or corrupt safetensors file (shorter than its header says)", path=str(path))
        view = view[n:]


class _Hasher:
    """sha256 of a stream of buffers, updated on a worker thread so that hashing overlaps the writes."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.sha = hashlib.sha256()
        self.pool = pool
        self.pending: Future[None] | None = None

    def feed(self, view: memoryview) -> None:
        self.wait()  # in order: one update at a time
        self.pending = self.pool.submit(self.sha.update, view)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def hexdigest(self) -> str:
        self.wait()
        return self.sha.hexdigest()


class _Copier:
    """Copies byte ranges from `src` to `dst`: through two alternating buffers while hashing, else in the kernel."""

    def __init__(self, src: BinaryIO, dst: BinaryIO, path: Path, hasher: _Hasher | None, update: Callable[[int], Any] | None):
        self.src, self.dst, self.path, self.hasher, self.update = src, dst, path, hasher, update
        self.buffers = [bytearray(COPY_CHUNK), bytearray(COPY_CHUNK)] if hasher else []
        self.turn = 0

    def copy(self, length: int) -> None:
        if self.hasher is None:
            self._kernel_copy(length)
            return
        while length > 0:
            n = min(COPY_CHUNK, length)
            # This buffer's previous bytes were hashed before the other buffer's hash was queued (feed waits).
            view = memoryview(self.buffers[self.turn])[:n]
            _read_into(self.src, view, self.path)
            self.hasher.feed(view)
            _write_all(self.dst, view)
            self.turn ^= 1
            length -= n
            if self.update:
                self.update(n)

    def _kernel_copy(self, length: int) -> None:
        """`os.copy_file_range` never passes the bytes through Python; on filesystems with reflinks it may share
        blocks copy-on-write, which is still an independent file (never a hard link). Fallback: read/write."""
        kernel = hasattr(os, "copy_file_range")
        while length > 0:
            n = min(COPY_CHUNK, length)
            done = 0
            if kernel:
                try:
                    done = os.copy_file_range(self.src.fileno(), self.dst.fileno(), n)
                except OSError:
                    kernel = False  # e.g. EXDEV or an old kernel: fall through to plain copies
            if not done:
                chunk = self.src.read(n)
                if not chunk:
                    raise IntegrityError(f"{self.path}: truncated or corrupt safetensors file (shorter than its header says)", path=str(self.path))
                _write_all(self.dst, chunk)
                done = len(chunk)
            length -= done
            if self.update:
                self.update(done)


def _fold_in_place(buf: memoryview, layout: Layout, stored: str, fold: TensorFold, plan: FoldPlan, check_digest: bool) -> None:
    """Fold a tensor's bytes in `buf` in place (same dtype, same size), after checking its digest where the
    manifest binds tensors only (schema 1: this is the one read and the one hash of a folded tensor)."""
    import torch

    from pearzoo.binding import verify_base
    from pearzoo.digest import tensor_digest
    from pearzoo.patch.fold import fold_weight_
    from pearzoo.shards import torch_dtype

    entry = layout.entries[stored]
    if check_digest:
        actual = tensor_digest(fold.name, entry.dtype, entry.shape, buf)
        if actual != fold.digest:  # the same error, naming the tensor, as verify_plan's
            verify_base({fold.name: fold.digest}, {fold.name: actual}, plan.who)
    torch_type = torch_dtype(entry.dtype)
    if torch_type is None or not torch_type.is_floating_point:
        raise InvalidInputError(f"{layout.path}: tensor {fold.name} has dtype {entry.dtype}; only float weights can be folded")
    if buf:  # a view of the buffer, not a copy: the fold changes the bytes that are then written out
        weight = torch.frombuffer(buf, dtype=torch_type).reshape(entry.shape)
        fold_weight_(weight, fold.coefficients, plan.head_dim, plan.layout, name=fold.name)


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
    *,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[int, Layout]:
    """Copy one safetensors file to `dst`, folding the tensors in `folds`; returns (bytes written, its layout).

    The header is validated again on the open file (what is copied is what was checked). With a file digest
    in the plan, every byte read is hashed (on `pool`'s thread, or a thread of its own) and the file's sha256
    compared at its end.
    Each folded tensor is read once into one buffer, folded in place and written from that same buffer.

    Raises:
        IntegrityError: truncated or corrupt, a tensor the index places here is missing, or the bytes are not
            the manifest's base (a file digest or, schema 1, a folded tensor's digest).
    """
    expected = (plan.file_digests or {}).get(src.name)
    if expected is not None and pool is None:  # a bound file is never copied unhashed
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pearzoo-hash") as own:
            return write_shard(src, dst, folds, plan, metadata, update, pool=own)
    hasher = _Hasher(pool) if expected is not None and pool is not None else None
    # Unbuffered on both sides: the kernel copies between the two file positions.
    with open(src, "rb", buffering=0) as fin:
        layout = read_layout(fin, src)
        missing = sorted(set(folds) - set(layout.entries))
        if missing:
            raise IntegrityError(f"{src}: tensor {missing[0]} is not in this shard, as its index says", path=str(src))
        if hasher:
            hasher.feed(memoryview(layout.raw_header))
        out_header = dict(layout.header)
        out_header["__metadata__"] = {**layout.metadata, **metadata}
        encoded = _encode_header(out_header, layout.data_start)
        ranges = sorted((layout.entries[name].begin, layout.entries[name].end, name) for name in folds)
        buffer = bytearray(max((end - begin for begin, end, _ in ranges), default=0))
        with open(dst, "xb", buffering=0) as fout, _one_torch_thread():
            copier = _Copier(fin, fout, src, hasher, update)
            _write_all(fout, encoded)
            pos = 0
            for begin, end, name in ranges:
                copier.copy(begin - pos)
                view = memoryview(buffer)[: end - begin]
                _read_into(fin, view, src)
                if hasher:
                    hasher.feed(view)
                    hasher.wait()  # hashed as read, before the fold changes it
                _fold_in_place(view, layout, name, folds[name], plan, check_digest=plan.file_digests is None)
                _write_all(fout, view)
                if update:
                    update(end - begin)
                pos = end
            copier.copy(layout.data_len - pos)
            if fin.read(1):
                raise IntegrityError(f"{src}: grew while it was copied", path=str(src))
            if hasher and (actual := hasher.hexdigest()) != expected:
                raise explain_file_mismatch(plan, src.name, actual)
            os.fsync(fout.fileno())
    return len(encoded) + layout.data_len, layout


# --- the whole directory ---------------------------------------------------------------------------------


def _copy_plain_files(source_dir: Path, tmp: Path, config: dict[str, Any]) -> list[str]:
    from pearzoo.source import confined

    copied = []
    for path in sorted(source_dir.iterdir()):
        name = path.name
        if name.startswith(".") or name in {CARD_NAME, "config.json", MANIFEST_NAME} or name.lower().endswith(_WEIGHT_SUFFIXES):
            continue
        if not path.is_file():
            continue  # folders, FIFOs, devices and dangling links are not part of a model
        confined(source_dir, name, what="model file")  # a symlink out of the folder is refused, not followed
        shutil.copyfile(path, tmp / name)  # follows the cache's symlinks; copies bytes, never links
        copied.append(name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return copied


def validate_output(tmp: Path, plan: FoldPlan, sources: Mapping[str, Layout], report: WriteReport) -> None:
    """Re-read what was written before it is renamed into place: every shard's header and offsets against its
    size, the same tensors (dtype, shape, byte size) as its source, and a config.json that parses.

    Raises:
        IntegrityError: the output is not a complete checkpoint (a write went wrong underneath us).
    """
    total = 0
    for name in plan.files:
        layout = read_file_layout(tmp / name)
        src = sources[name].entries
        if {k: (e.dtype, e.shape, e.end - e.begin) for k, e in layout.entries.items()} != {
            k: (e.dtype, e.shape, e.end - e.begin) for k, e in src.items()
        }:
            raise IntegrityError(f"{tmp / name}: the written shard does not hold its source's tensors", path=str(tmp / name))
        total += layout.file_size
    if total != report.bytes_written:
        raise IntegrityError(f"{tmp}: wrote {report.bytes_written} bytes of shards, found {total}", path=str(tmp))
    try:
        json.loads((tmp / "config.json").read_text(encoding="utf-8"))[CONFIG_KEY]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{tmp / 'config.json'}: not the config that was written", path=str(tmp)) from exc


def write_patched(
    plan: FoldPlan,
    manifest: Manifest,
    config: dict[str, Any],
    out: Path,
    *,
    force: bool = False,
    progress: Callable[[str, int], Any] | None = None,
    run: RunTemp | None = None,
    finish: Callable[[Path], Any] | None = None,
) -> WriteReport:
    """Write the patched model to `out`, atomically.

    Args:
        plan (`FoldPlan`): source checkpoint and the tensors to fold (and, schema 2, the files' sha256).
        manifest (`Manifest`): recorded in every shard's metadata, `config.json`, the card and `pearzoo.manifest.json`.
        config (`dict`): the source `config.json`; a `pearzoo` block is added.
        out (`Path`): target directory; must not exist unless `force` (then only a pearzoo output or empty).
        force (`bool`): replace an existing `out` (only once the new copy is complete).
        progress (*optional*): a progress-bar factory `(desc, total) -> bar`.
        run (`RunTemp`, *optional*): the run's temp folders (a caller that staged files already holds one).
        finish (*optional*): called with the complete temp folder just before its rename (e.g. to sign it).

    Raises:
        DiskSpaceError: the disk filled up; ResourceError: another write error (nothing is left behind).
        IntegrityError: a file or folded tensor is not the manifest's base, or a shard is truncated or corrupt.
    """
    if run is None:
        with RunTemp(out) as own:
            return write_patched(plan, manifest, config, out, force=force, progress=progress, run=own, finish=finish)
    tmp = run.path()
    report = WriteReport(out=out)
    sizes = {f: (plan.source_dir / f).stat().st_size for f in plan.files}
    bar = progress("patch", sum(sizes.values())) if progress else None
    try:
        tmp.mkdir()
        metadata = {METADATA_KEY: manifest.digest}
        sources: dict[str, Layout] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pearzoo-hash") as pool:
            for name in plan.files:
                written, sources[name] = write_shard(
                    plan.source_dir / name, tmp / name, plan.folds.get(name, {}), plan, metadata, bar.update if bar else None, pool=pool
                )
                report.bytes_written += written
                report.shards += 1
        report.copied_files = _copy_plain_files(plan.source_dir, tmp, {**config, CONFIG_KEY: config_block(manifest)})
        # exclude_unset: the document as it was sealed (a default-valued key that was absent stays absent),
        # so the copy still matches its digest.
        document = manifest.model_dump(mode="json", exclude_unset=True)
        (tmp / MANIFEST_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(render_card(manifest, plan.source_dir), encoding="utf-8")
        validate_output(tmp, plan, sources, report)
        if finish is not None:
            finish(tmp)  # e.g. sign it: the signature covers exactly what is renamed into place
        fsync_dir(tmp)
        move_into_place(tmp, out, run, force=force)
    except PearzooError:
        raise
    except OSError as exc:
        raise write_error(exc, out) from exc
    finally:
        if bar:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report

