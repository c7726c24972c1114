"""Fuzzing the safetensors framing parser (`pearzoo.shards.read_layout`), the index reader and path confinement.

Only pearzoo's own errors may escape, and whatever the parser accepts must be a file the safetensors library
itself opens and reads tensor by tensor with the same bytes (a differential check: the parser may be no
laxer than the reference). Inputs: arbitrary bytes, headers generated field by field (valid and broken
dtypes, shapes and offsets), and byte-level mutations of a real file (flips, truncation, insertion).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from pearzoo.errors import PearzooError, UnsafeInputError
from pearzoo.shards import DTYPE_BITS, read_index, read_layout
from pearzoo.source import confined

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="pearzoo-fuzz-"))
# A real file: three tensors of the dtypes patch folds (and one int), as safetensors writes them.
REAL = save(
    {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.ones(2, 3, dtype=torch.bfloat16),
        "c": torch.tensor([1, 2, 3], dtype=torch.int64),
    },
    metadata={"format": "pt"},
)
_TORCH_OK = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def _check(data: bytes) -> None:
    """read_layout either raises a PearzooError or returns a layout that safetensors agrees with."""
    path = _DIR / "x.safetensors"
    path.write_bytes(data)
    try:
        with open(path, "rb") as fh:
            layout = read_layout(fh, path)
    except PearzooError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    # Accepted: the reference library must open it, list the same tensors, and read the same bytes.
    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == set(layout.entries)
        for name, e in layout.entries.items():
            if e.dtype in _TORCH_OK:
                t = fh.get_tensor(name)
                raw = t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
                assert raw == data[layout.data_start + e.begin : layout.data_start + e.end]
    assert layout.file_size == len(data) and sum(e.end - e.begin for e in layout.entries.values()) == layout.data_len


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    _check(data)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_header_after_a_plausible_size(body):
    _check(struct.pack("<Q", len(body)) + body + b"\0" * 64)


_dtypes = st.sampled_from([*DTYPE_BITS, "F128", "", "f32", 7])
_shape = st.lists(st.one_of(st.integers(0, 6), st.integers(-3, -1), st.just("2"), st.floats(0, 3)), max_size=3)
_entry = st.fixed_dictionaries({"dtype": _dtypes, "shape": _shape, "data_offsets": st.lists(st.integers(-4, 400), min_size=0, max_size=3)})


@st.composite
def _files(draw) -> bytes:
    """Headers built field by field: with probability 1/2 the offsets are made consistent, so valid files are
    generated often enough for the acceptance path to be exercised."""
    names = draw(st.lists(st.text(min_size=1, max_size=6), max_size=4, unique=True))
    header: dict = {}
    pos = 0
    consistent = draw(st.booleans())
    for name in names:
        entry = draw(_entry)
        if consistent and entry["dtype"] in DTYPE_BITS and all(type(d) is int and d >= 0 for d in entry["shape"]):
            n = 1
            for d in entry["shape"]:
                n *= d
            bits = n * DTYPE_BITS[entry["dtype"]]
            if bits % 8 == 0:
                entry["data_offsets"] = [pos, pos + bits // 8]
                pos += bits // 8
        header[name] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()), max_size=2))
    raw = json.dumps(header).encode()
    pad = draw(st.integers(0, 7))
    data_len = pos + draw(st.sampled_from([0, 0, 0, -1, 1, -100]))
    return struct.pack("<Q", len(raw) + pad) + raw + b" " * pad + bytes(max(0, data_len))


@FUZZ
@given(_files())
def test_generated_headers(data):
    _check(data)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, len(REAL) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutations_of_a_real_file(edits):
    data = bytearray(REAL)
    for op, at, value in edits:
        at %= max(1, len(data))
        if op == "flip" and data:
            data[at] ^= value or 1
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = bytes([value])
    _check(bytes(data))


def test_the_real_file_is_accepted():
    path = _DIR / "real.safetensors"
    path.write_bytes(REAL)
    with open(path, "rb") as fh:
        layout = read_layout(fh, path)
    assert sorted(layout.entries) == ["a", "b", "c"] and layout.metadata == {"format": "pt"}


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=12).map(lambda v: json.dumps({"weight_map": v}).encode())))
def test_index_reader(data):
    path = _DIR / "model.safetensors.index.json"
    path.write_bytes(data)
    try:
        weight_map = read_index(path)
    except PearzooError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())


@FUZZ
@given(st.text(max_size=40))
def test_confined_names_stay_inside_the_folder(name):
    folder = _DIR / "model"
    folder.mkdir(exist_ok=True)
    try:
        path = confined(folder, name, what="weight_map")
    except UnsafeInputError as exc:
        assert "\n" not in str(exc).replace(name, "")
        return
    except ValueError:  # a name with characters the OS cannot resolve: refused by Path itself, not a file
        pytest.skip("not a path on this OS")
    assert path.parent == folder and folder.resolve() in path.resolve().parents
