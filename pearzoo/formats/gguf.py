"""GGUF in -> GGUF out: fold a manifest into a GGUF file's output projections and keep every other byte.

ggml contracts a weight over its first dimension (ne0), so in every GGUF the output projection's input
features run along each stored row, whatever the architecture (GPT-2's Conv1D weights are stored
transposed to that form; transformers transposes them back on load). Head h owns elements
`h*head_dim .. (h+1)*head_dim` of every row; llama's Q/K row permutation does not touch `attn_output`.
How a head's slice is scaled depends on the tensor's type:

- F32, F16, BF16: the values themselves, as `patch.fold.fold_weight_` scales them (float32 product, one
  rounding to the stored type).
- Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 when head_dim is a multiple of 32: every block of 32 lies inside one head,
  and its value is d*q (+ m), so scaling the block's fp16 scale d (and min m) by tau scales the block
  exactly, up to the fp16 rounding of the new d and m. The quants are not touched.
- any other type gguf-py can quantize: the blocks that hold a scaled element are dequantized, scaled and
  re-quantized (only those blocks; the rest of the tensor keeps its bytes). Types gguf-py cannot quantize
  (the K-quants, the IQ types) are refused, naming the type: their super-block scales span several heads.

The file is rewritten byte for byte: header, every original key/value pair, pearzoo's provenance keys
(`pearzoo.*`) after them, the tensor infos (their data offsets are relative to the data section, so they
do not change), then the data section with only the folded tensors' bytes replaced. The base binding is
the manifest's: its tensors are the GGUF's dequantized as transformers loads them (`hf_tensor`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pearzoo.errors import DiskSpaceError, IntegrityError, InvalidInputError
from pearzoo.formats.gguf_header import _HEADER, _STRING, KEY_PREFIX, MANIFEST_KEY, GGUFLayout, TensorInfo, open_gguf, stamped_manifest

COPY_CHUNK = 16 * 2**20

ProgressFactory = Callable[[str, int], Any]


@dataclass(frozen=True)
class FoldedTensor:
    """One folded tensor: its transformers and GGUF names, its GGUF type, and how it was folded."""

    name: str
    gguf_name: str
    qtype: str
    method: str  # "scale" (block scales), "float" (values), "requantize" (touched blocks)
    coefficients: dict[int, float]


@dataclass(frozen=True)
class GGUFPatch:
    tensors: list[FoldedTensor]
    out: Path | None
    bytes_written: int


def check_not_patched(path: Path) -> None:
    """Refuse a GGUF that pearzoo already patched (a second fold would multiply the coefficients).

    Raises:
        IntegrityError: the file carries `pearzoo.*` metadata.
    """
    digest = stamped_manifest(open_gguf(path))
    if digest is not None:
        raise IntegrityError(f"{path} is already patched by pearzoo (manifest {digest[:12]}); patch the base model instead", path=str(path))


def _arch(reader: GGUFLayout) -> str:
    arch = reader.strings.get("general.architecture")
    if arch is None:
        raise InvalidInputError(f"{reader.path}: GGUF file has no general.architecture", path=str(reader.path))
    return arch


def gguf_names(reader: GGUFLayout, names: list[str], num_layers: int) -> dict[str, str]:
    """transformers tensor name -> GGUF tensor name, through gguf-py's tensor map (as transformers' loader maps
    them). Names the map does not know are left out."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = _arch(reader)
    key = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if key is None:
        raise InvalidInputError(f"GGUF architecture '{arch}' is unknown to gguf-py")
    name_map = get_tensor_name_map(key, num_layers)
    found = {}
    for name in names:
        module, _, suffix = name.rpartition(".")
        # transformers maps submodules too (BLOOM's GGUF names come from BloomModel, without `transformer.`).
        candidates = [module, module.split(".", 1)[-1]]
        mapped = next((m for m in (name_map.get_name(c) for c in candidates) if m), None)
        if mapped is not None:
            found[name] = f"{mapped}.{suffix}"
    return found


def hf_tensor(reader: Any, tensor: Any, dtype: Any, config: Mapping[str, Any]) -> Any:
    """A GGUF tensor as transformers' GGUF loader gives it: gguf-py's `dequantize`, then transformers' own
    per-architecture tensor processor (e.g. GPT-2's transpose), then `dtype`."""
    import torch
    from gguf import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(_arch(reader), TensorProcessor)(config=dict(config))
    weights = dequantize(reader.tensor_data(tensor), tensor.tensor_type)
    result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping={}, parsed_parameters={"tensors": {}})
    return torch.from_numpy(np.copy(result.weights)).to(dtype)


def _exact_types() -> dict[Any, bool]:
    from gguf import GGMLQuantizationType as T

    return {T.Q8_0: False, T.Q4_0: False, T.Q5_0: False, T.Q4_1: True, T.Q5_1: True}  # type -> has a min


def _float_types() -> dict[Any, Any]:
    import torch
    from gguf import GGMLQuantizationType as T

    return {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


def _can_quantize(qtype: Any, block: int) -> bool:
    from gguf import quantize

    try:
        quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def fold_tensor_bytes(reader: Any, tensor: Any, coefficients: Mapping[int, float], head_dim: int) -> tuple[bytes, str]:
    """The folded bytes of one GGUF tensor (same size and type) and the method used (see the module doc).

    Raises:
        InvalidInputError: a head outside the tensor, a non-finite coefficient, a scale that overflows fp16,
            or a type that cannot be folded.
    """
    from gguf import GGML_QUANT_SIZES

    from pearzoo.patch.fold import fold_weight_
    from pearzoo.recipe.schema import Layout

    qtype = tensor.tensor_type
    n_in = int(tensor.shape[0])
    rows = int(tensor.n_elements) // n_in
    num_heads = n_in // head_dim
    for head, tau in coefficients.items():
        if not 0 <= head < num_heads:
            raise InvalidInputError(f"{tensor.name}: head {head} out of range (the tensor holds {num_heads} heads of {head_dim})", field="head")
        if not np.isfinite(tau):
            raise InvalidInputError(f"coefficient for head {head} is not finite ({tau})", field="coefficient")
    scaled = {h: float(t) for h, t in coefficients.items() if float(t) != 1.0}
    raw = np.array(reader.data[tensor.data_offset : tensor.data_offset + tensor.n_bytes], dtype=np.uint8)
    floats = _float_types()
    if qtype in floats:
        import torch

        weight = torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8).view(floats[qtype]).reshape(rows, n_in)
        return fold_weight_(weight, scaled, head_dim, Layout.columns).view(torch.uint8).numpy().tobytes(), "float"
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(rows, n_in // block, size)
    factor = np.ones(n_in, dtype=np.float32)
    for head, tau in scaled.items():
        factor[head * head_dim : (head + 1) * head_dim] = np.float32(tau)
    per_block = factor.reshape(-1, block)
    cols = np.flatnonzero((per_block != 1.0).any(axis=1))
    exact = _exact_types()
    if qtype in exact and head_dim % block == 0:
        # Each touched block lies inside one head: its coefficient is per_block[col, 0].
        taus = per_block[cols, 0]
        fields = 2 if exact[qtype] else 1  # d, then m for the _1 types: fp16 each, at the start of the block
        for k in range(fields):
            half = np.ascontiguousarray(blocks[:, cols, 2 * k : 2 * k + 2]).view("<f2")[..., 0]
            new = (half.astype(np.float32) * taus).astype("<f2")
            if not np.isfinite(new).all():
                raise InvalidInputError(f"{tensor.name}: a scaled block scale overflows fp16 (coefficient too large)", tensor=tensor.name)
            blocks[:, cols, 2 * k : 2 * k + 2] = new[..., None].view(np.uint8).reshape(rows, len(cols), 2)
        return blocks.tobytes(), "scale"
    if not _can_quantize(qtype, block):
        raise InvalidInputError(
            f"{tensor.name}: GGUF type {qtype.name} cannot be folded (its blocks of {block} span heads of {head_dim} "
            f"and gguf-py cannot re-quantize {qtype.name}); use a Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/F16/F32 file or --format safetensors",
            tensor=tensor.name,
        )
    from gguf import dequantize, quantize

    if len(cols):
        touched = np.ascontiguousarray(blocks[:, cols, :]).reshape(rows * len(cols), size)
        values = dequantize(touched, qtype).reshape(rows, len(cols), block) * per_block[cols]
        blocks[:, cols, :] = quantize(values.reshape(rows * len(cols), block).astype(np.float32), qtype).reshape(rows, len(cols), size)
    return blocks.tobytes(), "requantize"


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode("utf-8"), value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STRING) + struct.pack("<Q", len(v)) + v


def write_gguf(
    reader: Any,
    src: Path,
    out: Path,
    replaced: Mapping[str, bytes],
    metadata: Mapping[str, str],
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
    originals: Mapping[str, str] | None = None,
    bound: tuple[str, str] | None = None,
    who: str | None = None,
    sign_key: Path | None = None,
) -> int:
    """Write `src` to `out` with `replaced` tensors' bytes and `metadata` string keys added; atomic.

    The source is read once, sequentially from offset 0, into a temp file beside `out` that this run's lock
    claims (`patch.target.RunTemp`). Every byte read is hashed when `bound` (file name, sha256: a schema-2
    manifest's `base.files` entry) is given, and a mismatch is refused before the final rename; the bytes of
    each folded tensor must also hash to `originals` (their sha256 when they were folded), so a file changed
    between the fold and the copy is refused either way. With `sign_key` the finished temp file is signed
    (`trust.sign_file`) before the rename and its signature renamed to `<out>.sig` right after the GGUF.
    `out` is replaced only as `patch.target.check_out` allows (a GGUF pearzoo stamped, under `force`).

    Returns the bytes written.

    Raises:
        IntegrityError: the source is not the bound file (exit 5), or changed or grew while it was copied.
        InvalidInputError: the source is truncated; `out` exists and may not be replaced.
        ResourceError: the output cannot be written (DiskSpaceError: no space); nothing is left behind.
    """
    from pearzoo.binding import file_mismatch
    from pearzoo.patch.target import RunTemp, check_out, fsync_dir, move_into_place, write_error

    kv_count, kv_end, info_end = reader.kv_count, reader.kv_end, reader.info_end
    added = b"".join(_kv_string(k, v) for k, v in metadata.items())
    data_start = reader.data_offset
    total = os.path.getsize(src) - data_start
    spans = sorted((t.data_offset - data_start, t.n_bytes, t.name) for t in reader.tensors if t.name in replaced)
    for _, n, name in spans:
        if len(replaced[name]) != n:
            raise AssertionError("a folded tensor changed size")  # a bug: fold_tensor_bytes keeps the size
    header_len = info_end + len(added)
    size = header_len + (-header_len % reader.alignment) + total
    check_out(out, force=force, file=True)
    sha = hashlib.sha256() if bound else None
    signature = out.with_name(out.name + ".sig")
    try:
        with RunTemp(out) as run:
            if shutil.disk_usage(out.parent).free < size:
                raise DiskSpaceError(f"{out.parent}: {size} bytes needed for {out.name}, {shutil.disk_usage(out.parent).free} free", path=str(out))
            tmp = run.path()
            bar = progress(f"writing {out.name}", size) if progress else None
            try:
                with open(src, "rb") as fin, open(tmp, "xb") as fout:
                    head = _read_exact(fin, data_start, sha)  # header, tensor infos and padding: hashed as read
                    if head[:info_end] != bytes(reader.data[:info_end]):
                        raise IntegrityError(f"{src}: changed while it was read (its header differs)", path=str(src))
                    header = bytearray(head[:16] + struct.pack("<Q", kv_count + len(metadata)) + head[_HEADER:kv_end] + added + head[kv_end:info_end])
                    header += b"\0" * (-len(header) % reader.alignment)
                    fout.write(header)
                    pos = 0
                    for offset, n, name in spans:
                        _copy(fin, fout, offset - pos, bar, sha)
                        original = _read_exact(fin, n, sha)
                        if originals is not None and hashlib.sha256(original).hexdigest() != originals[name]:
                            raise IntegrityError(f"{src}: tensor {name} changed while the file was read", path=str(src))
                        fout.write(replaced[name])
                        if bar:
                            bar.update(n)
                        pos = offset + n
                    _copy(fin, fout, total - pos, bar, sha)
                    if fin.read(1):
                        raise IntegrityError(f"{src}: grew while it was copied", path=str(src))
                    if sha is not None and bound is not None and (actual := sha.hexdigest()) != bound[1]:
                        raise file_mismatch(who or str(src), bound[0], bound[1], actual)
                    fout.flush()
                    os.fsync(fout.fileno())
            finally:
                if bar:
                    bar.close()
            staged_sig = None
            if sign_key is not None:
                from pearzoo.trust import sign_file

                staged_sig = run.path(".sig")
                sign_file(tmp, sign_key, staged_sig, name=out.name, scratch=run.path(".sign"))
            replacing = out.exists()
            move_into_place(tmp, out, run, force=force)
            # The signature follows the GGUF at once; one left beside the replaced output would not match it.
            if staged_sig is not None:
                os.replace(staged_sig, signature)
            elif replacing and signature.is_file() and not signature.is_symlink():
                signature.unlink()
            fsync_dir(out.parent)
    except OSError as exc:
        raise write_error(exc, out) from exc
    return size


def _read_exact(fin: Any, n: int, sha: Any) -> bytes:
    data = fin.read(n)
    if len(data) != n:
        raise InvalidInputError(f"{fin.name}: truncated GGUF file (tensor data ends early)", path=str(fin.name))
    if sha is not None:
        sha.update(data)
    return data


def _copy(fin: Any, fout: Any, n: int, bar: Any, sha: Any = None) -> None:
    while n > 0:
        chunk = fin.read(min(COPY_CHUNK, n))
        if not chunk:
            raise InvalidInputError(f"{fin.name}: truncated GGUF file (tensor data ends early)", path=str(fin.name))
        if sha is not None:
            sha.update(chunk)
        fout.write(chunk)
        n -= len(chunk)
        if bar:
            bar.update(len(chunk))


def provenance(manifest: Any) -> dict[str, str]:
    """The `pearzoo.*` string keys a patched GGUF carries: what was applied, by which pearzoo, and the manifest."""
    from pearzoo import __version__
    from pearzoo.manifest.io import manifest_json

    return {
        "pearzoo.version": __version__,
        MANIFEST_KEY: manifest.digest,
        "pearzoo.base_model": manifest.base.model_id,
        "pearzoo.recipe": f"{manifest.recipe.id} {manifest.recipe.version}",
        "pearzoo.heads": " ".join(f"{h.layer}.{h.head}={h.coefficient!r}" for h in manifest.heads),
        "pearzoo.manifest_json": manifest_json(manifest),
    }


def gguf_target(out: Path | None, src: Path, *, dry_run: bool, force: bool) -> Path:
    """The output file: `--out`, or `<source stem>-pear.gguf` in the working directory, checked as
    `patch.target.check_out` checks any output (an existing one is replaced only under `force` and only
    when it is a GGUF pearzoo stamped).

    Raises:
        InvalidInputError: the output is the source, a directory, exists and may not be replaced, or cannot
            be written.
    """
    from pearzoo.patch.target import check_out

    target = (out or Path.cwd() / f"{src.stem}-pear.gguf").expanduser().absolute()
    if target.resolve() == src.resolve():
        raise InvalidInputError(f"--out {target} is the source model; choose another file", path=str(target))
    if target.is_dir():
        raise InvalidInputError(f"--out {target} is a directory; --format gguf writes one .gguf file", path=str(target))
    if not dry_run:
        check_out(target, force=force, file=True)
    return target


def patch_gguf(
    src: Path,
    manifest: Any,
    *,
    out: Path,
    model_id: str,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressFactory | None = None,
    bound: tuple[str, str] | None = None,
    sign_key: Path | None = None,
) -> GGUFPatch:
    """Verify `src` against the manifest's base and write the folded GGUF to `out`.

    `bound`: (file name, sha256) of a schema-2 manifest's `base.files`: every byte of `src` is hashed as it is
    copied (a dry run hashes the file) and a mismatch is refused before anything is renamed into place.

    Raises:
        IntegrityError: already patched; not the manifest's base (naming the tensor, or the file under
            `bound`); another model type or head geometry.
        InvalidInputError: a type that cannot be folded; an unreadable file.
    """
    from pearzoo.binding import verify_base
    from pearzoo.heads import geometry_from_config
    from pearzoo.manifest.recorded import recorded_recipe
    from pearzoo.patch.plan import check_geometry, coefficients_by_layer
    from pearzoo.shards import digest_of
    from pearzoo.source import ModelSource, dtype_from_name, load_config

    reader = open_gguf(src)
    digest = stamped_manifest(reader)
    if digest is not None:
        raise IntegrityError(f"{src} is already patched by pearzoo (manifest {digest[:12]}); patch the base model instead", path=str(src))
    base = manifest.base
    config = load_config(ModelSource(kind="gguf", path=src.parent, model_id=model_id, gguf_file=src.name)).to_dict()
    if config.get("model_type") != base.model_type:
        raise IntegrityError(f"{src} is a '{config.get('model_type')}' model; the manifest is for a '{base.model_type}' model", path=str(src))
    geometry = geometry_from_config(recorded_recipe(manifest).heads, config)
    check_geometry(geometry, manifest, src)
    by_layer = coefficients_by_layer(manifest)
    folded_names = {geometry.tensor_name(layer): layer for layer in by_layer}
    for name in folded_names:
        if name not in base.tensors:
            raise IntegrityError(f"the manifest does not bind tensor {name} (no digest in base.tensors)", tensor=name)
    mapping = gguf_names(reader, sorted(base.tensors), geometry.num_layers)
    tensors = {t.name: t for t in reader.tensors}
    dtype = dtype_from_name(base.dtype)
    actual = {
        name: digest_of(name, hf_tensor(reader, tensors[gname], dtype, config))
        for name, gname in mapping.items()
        if gname in tensors
    }
    verify_base(base.tensors, actual, model_id)
    folds: list[FoldedTensor] = []
    replaced: dict[str, bytes] = {}
    originals: dict[str, str] = {}
    for name, layer in sorted(folded_names.items(), key=lambda kv: kv[1]):
        tensor = tensors[mapping[name]]
        originals[tensor.name] = hashlib.sha256(reader.data[tensor.data_offset : tensor.data_offset + tensor.n_bytes]).hexdigest()
        data, method = fold_tensor_bytes(reader, tensor, by_layer[layer], geometry.head_dim)
        replaced[tensor.name] = data
        folds.append(FoldedTensor(name, tensor.name, tensor.tensor_type.name, method, dict(by_layer[layer])))
    if dry_run:
        if bound is not None:
            from pearzoo.binding import file_mismatch
            from pearzoo.digest import file_digest

            if (actual := file_digest(src)) != bound[1]:
                raise file_mismatch(model_id, bound[0], bound[1], actual)
        return GGUFPatch(folds, None, 0)
    written = write_gguf(
        reader, src, out, replaced, provenance(manifest), force=force, progress=progress,
        originals=originals, bound=bound, who=model_id, sign_key=sign_key,
    )  # fmt: skip
    return GGUFPatch(folds, out, written)


def require_gguf_source(gguf_file: str | None, requested: str) -> None:
    if not gguf_file:
        raise InvalidInputError(f"--format gguf needs a GGUF source; {requested} is not one", hint="use --format safetensors")


__all__ = [
    "KEY_PREFIX", "MANIFEST_KEY", "FoldedTensor", "GGUFLayout", "GGUFPatch", "TensorInfo", "check_not_patched", "fold_tensor_bytes",
    "gguf_target", "open_gguf", "patch_gguf", "stamped_manifest", "write_gguf",
]  # fmt: skip
