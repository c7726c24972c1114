"""The header of a GGUF file, read without decoding its values: what `formats.gguf` folds and what
`patch.target` checks before `--force` replaces a file (a GGUF pearzoo stamped). Imports nothing of pearzoo's
but its errors, so both can use it without an import circle."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pearzoo.errors import InvalidInputError

MANIFEST_KEY = "pearzoo.manifest"
KEY_PREFIX = "pearzoo."
_STRING = 8  # GGUFValueType.STRING
_HEADER = 24  # magic, version (u32), tensor count, kv count (u64): GGUF v2 and v3

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ne0 first, as GGUF stores it
    tensor_type: Any  # gguf.GGMLQuantizationType
    data_offset: int  # absolute, in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class GGUFLayout:
    """What pearzoo needs of a GGUF header, read in one pass without decoding the values (gguf-py's reader
    builds a numpy view per token string: seconds for a 49k-token vocabulary, read here in milliseconds)."""

    path: Path
    kv_count: int
    kv_end: int
    info_end: int
    alignment: int
    data_offset: int
    strings: dict[str, str]  # the string-valued keys
    tensors: list[TensorInfo]
    data: Any  # np.memmap of the whole file, uint8

    def tensor_data(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as gguf-py's reader and `dequantize` shape them: dims reversed (numpy order),
        the last one in raw bytes (uint8)."""
        from gguf import GGML_QUANT_SIZES

        block, size = GGML_QUANT_SIZES[t.tensor_type]
        dims = tuple(reversed(t.shape[1:])) + (t.shape[0] // block * size,)
        return np.asarray(self.data[t.data_offset : t.data_offset + t.n_bytes]).reshape(dims)


def open_gguf(path: Path) -> GGUFLayout:
    """The header of a GGUF file (v2 or v3, little-endian), its tensor infos and a read-only map of its data.

    Raises:
        InvalidInputError: not a GGUF file, a truncated or malformed header, a big-endian file (refused: the
            byte-level rewrite assumes little-endian), or a tensor type gguf-py does not know.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"{path}: not a readable GGUF file ({why})", path=str(path))

    try:
        data = np.memmap(path, mode="r", dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise bad(type(exc).__name__) from exc
    buf = memoryview(data)
    try:
        if bytes(buf[:4]) != b"GGUF":
            raise bad("no GGUF magic")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise bad(f"version {version}" + (", big-endian" if version > 0xFFFF else ""))
        off = _HEADER
        strings: dict[str, str] = {}
        alignment = 32
        for _ in range(n_kv):
            key, off = _read_str(buf, off)
            (vtype,) = struct.unpack_from("<I", buf, off)
            off += 4
            if vtype == _STRING:
                value, off = _read_str(buf, off)
                strings[key] = value
            elif vtype == 9:
                etype, count = struct.unpack_from("<IQ", buf, off)
                off += 12
                if etype == _STRING:
                    for _ in range(count):
                        (n,) = struct.unpack_from("<Q", buf, off)
                        off += 8 + n
                elif etype in _SCALAR:
                    off += _SCALAR[etype] * count
                else:
                    raise bad(f"array of value type {etype} in {key}")
            elif vtype in _SCALAR:
                if key == "general.alignment" and vtype == 4:
                    (alignment,) = struct.unpack_from("<I", buf, off)
                off += _SCALAR[vtype]
            else:
                raise bad(f"value type {vtype} in {key}")
        kv_end = off
        infos = []
        for _ in range(n_tensors):
            name, off = _read_str(buf, off)
            (n_dims,) = struct.unpack_from("<I", buf, off)
            shape = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
            off += 4 + 8 * n_dims
            qtype, rel = struct.unpack_from("<IQ", buf, off)
            off += 12
            infos.append((name, tuple(int(d) for d in shape), qtype, rel))
    except struct.error as exc:
        raise bad("truncated header") from exc
    if alignment == 0 or alignment & (alignment - 1):
        raise bad(f"alignment {alignment}")
    data_offset = off + (-off % alignment)
    tensors = []
    for name, shape, qtype, rel in infos:
        try:
            t = GGMLQuantizationType(qtype)
        except ValueError as exc:
            raise bad(f"tensor {name} has unknown type {qtype}") from exc
        block, size = GGML_QUANT_SIZES[t]
        n = int(np.prod(shape))
        if not shape or shape[0] % block:
            raise bad(f"tensor {name}: {shape[0] if shape else 0} elements per row is not a multiple of {t.name}'s block of {block}")
        tensors.append(TensorInfo(name, shape, t, data_offset + rel, n // block * size))
        if data_offset + rel + n // block * size > len(data):
            raise bad(f"tensor {name} runs past the end of the file")
    return GGUFLayout(path, n_kv, kv_end, off, alignment, data_offset, strings, tensors, data)


def _read_str(buf: memoryview, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, off)
    if off + 8 + n > len(buf):
        raise struct.error("string past the end")
    return bytes(buf[off + 8 : off + 8 + n]).decode("utf-8", "replace"), off + 8 + n


def stamped_manifest(reader: GGUFLayout) -> str | None:
    """The manifest digest a pearzoo-patched GGUF carries ("?" for other `pearzoo.*` keys), or None."""
    if MANIFEST_KEY in reader.strings:
        return reader.strings[MANIFEST_KEY]
    return "?" if any(k.startswith(KEY_PREFIX) for k in reader.strings) else None
