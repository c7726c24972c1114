"""GGUF in -> GGUF out (pearzoo/formats/gguf.py) on tiny llama GGUF files written with gguf-py, one per type.

What is checked against code pearzoo does not own: the manifests bind the tensors as transformers' GGUF
loader gives them, and the patched file is read back with that loader and with gguf-py's reader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pearzoo.errors import IntegrityError, InvalidInputError
from pearzoo.patch.api import PatchOptions, patch_model
from tiny_checkpoints import MIN_EFFECT, manifest_document, write_json
from tiny_gguf import load_gguf_model, write_tiny_llama_gguf

# Not powers of two: the fp16 block scales must round. (1, 0) = 1.0 exactly: that head's slice keeps its bytes.
HEADS = {(0, 1): 0.7132351994514465, (0, 0): 1.0, (1, 2): 1.2805, (1, 3): 0.25}
EXACT = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
FLOATS = ["F32", "F16", "BF16"]


def _manifest(path: Path, tmp: Path, heads=HEADS) -> Path:
    from pearzoo.binding import base_digests
    from pearzoo.source import ModelSource

    model = load_gguf_model(path)
    source = ModelSource(kind="gguf", path=path.parent, model_id="pearzoo-test/tiny-llama", gguf_file=path.name)
    names = {f"model.layers.{layer}.self_attn.o_proj.weight" for layer, _ in heads}
    doc = manifest_document(model.config, base_digests(source, model, names), heads, model_id=source.model_id, base_format="gguf", file=path.name)
    return write_json(doc, tmp / "m.json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _patch(src: Path, tmp: Path, **kw) -> tuple[object, Path]:
    out = tmp / "out" / "tiny-pear.gguf"
    result = patch_model(PatchOptions(model=str(src), manifest=_manifest(src, tmp), out=out, **kw))
    return result, out


def _check_bytes(src: Path, out: Path, digest: str) -> set[str]:
    """Every original key/value pair and every unfolded tensor keep their bytes; names of tensors that changed."""
    from pearzoo.formats.gguf import open_gguf

    a, b = open_gguf(src), open_gguf(out)
    head_a, head_b = a.data[: a.info_end].tobytes(), b.data[: b.info_end].tobytes()
    assert head_b[24 : a.kv_end] == head_a[24 : a.kv_end]  # the original pairs, byte for byte
    assert head_b[b.kv_end :] == head_a[a.kv_end :]  # tensor infos, offsets included
    assert b.kv_count == a.kv_count + 6 and b.strings["pearzoo.manifest"] == digest
    assert out.stat().st_size - src.stat().st_size == (b.data_offset - a.data_offset)  # only the header grew
    changed = set()
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert (ta.name, ta.shape, ta.tensor_type, ta.n_bytes) == (tb.name, tb.shape, tb.tensor_type, tb.n_bytes)
        if a.data[ta.data_offset : ta.data_offset + ta.n_bytes].tobytes() != b.data[tb.data_offset : tb.data_offset + tb.n_bytes].tobytes():
            changed.add(ta.name)
    return changed


def _heads_of(layer: int) -> dict[int, float]:
    return {h: t for (l, h), t in HEADS.items() if l == layer}


@pytest.mark.parametrize("qtype", EXACT + FLOATS)
def test_fold_per_type(qtype, tmp_path):
    """Block types: each block's fp16 scale (and min) scaled; floats: the values. Checked as transformers loads them."""
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf", qtype)
    before = _sha(src)
    result, out = _patch(src, tmp_path)
    assert result.format == "gguf" and result.out == str(out) and result.bytes_written == out.stat().st_size
    assert _sha(src) == before
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file left
    assert _check_bytes(src, out, result.manifest) == {"blk.0.attn_output.weight", "blk.1.attn_output.weight"}

    base, patched = load_gguf_model(src), load_gguf_model(out)
    worst = 0.0
    for layer in (0, 1):
        w0 = base.model.layers[layer].self_attn.o_proj.weight
        w1 = patched.model.layers[layer].self_attn.o_proj.weight
        for head in range(4):
            tau = _heads_of(layer).get(head, 1.0)
            sl = slice(head * 32, (head + 1) * 32)
            if tau == 1.0:
                assert torch.equal(w1[:, sl], w0[:, sl])
            elif qtype in FLOATS:
                dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[qtype]
                assert torch.equal(w1[:, sl], (w0[:, sl] * tau).to(dtype).float())  # one rounding, as fold_weight
            else:
                expected = w0[:, sl] * tau  # one block of 32 per row: the head's slice
                rel = ((w1[:, sl] - expected).abs().amax(1) / expected.abs().amax(1)).max().item()
                worst = max(worst, rel)
    assert worst <= 2**-9  # the new d (and m) are rounded to fp16 once: relative 2^-11 each
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (patched(ids).logits - base(ids).logits).abs().max().item() > MIN_EFFECT


def test_requantize_when_blocks_span_heads(tmp_path):
    """head_dim 16 < Q8_0's block of 32: the touched blocks are dequantized, scaled and re-quantized; the rest keep their bytes."""
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf", "Q8_0", hidden=64, head_dim=16)
    result, out = _patch(src, tmp_path)
    base, patched = load_gguf_model(src), load_gguf_model(out)
    for layer in (0, 1):
        w0 = base.model.layers[layer].self_attn.o_proj.weight
        w1 = patched.model.layers[layer].self_attn.o_proj.weight
        factor = torch.ones(64)
        for head, tau in _heads_of(layer).items():
            factor[head * 16 : (head + 1) * 16] = tau
        expected = w0 * factor
        for block in range(2):  # blocks of 32 = heads (0, 1) and (2, 3)
            sl = slice(block * 32, (block + 1) * 32)
            if bool((factor[sl] == 1.0).all()):
                assert torch.equal(w1[:, sl], w0[:, sl])
            else:  # Q8_0 step d = max/127: half a step, plus 127 q times d's fp16 rounding (2^-11 d each)
                step = expected[:, sl].abs().amax(1, keepdim=True) / 127
                assert bool(((w1[:, sl] - expected[:, sl]).abs() <= (0.5 + 127 * 2**-11) * step * (1 + 1e-6)).all())


def test_k_quant_refused_in_one_line(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf", "Q4_K", hidden=256, head_dim=64)
    with pytest.raises(InvalidInputError) as exc:
        _patch(src, tmp_path)
    assert str(exc.value) == (
        "blk.0.attn_output.weight: GGUF type Q4_K cannot be folded (its blocks of 256 span heads of 64 and gguf-py "
        "cannot re-quantize Q4_K); use a Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/F16/F32 file or --format safetensors"
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_refusals_leave_nothing(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf", "Q4_0")
    manifest = _manifest(src, tmp_path)
    out = tmp_path / "out.gguf"
    patch_model(PatchOptions(model=str(src), manifest=manifest, out=out))
    with pytest.raises(IntegrityError, match=r"tiny-pear|out.gguf is already patched by pearzoo \(manifest [0-9a-f]{12}\)"):
        patch_model(PatchOptions(model=str(out), manifest=manifest, out=tmp_path / "twice.gguf"))
    with pytest.raises(InvalidInputError, match="already exists"):
        patch_model(PatchOptions(model=str(src), manifest=manifest, out=out))
    with pytest.raises(InvalidInputError, match="is the source model"):
        patch_model(PatchOptions(model=str(src), manifest=manifest, out=src, force=True))
    other = write_tiny_llama_gguf(tmp_path / "other.gguf", "Q4_0", seed=1)
    with pytest.raises(IntegrityError, match=r"is not the manifest's base: tensor model.layers.0.self_attn.o_proj.weight differs"):
        patch_model(PatchOptions(model=str(other), manifest=manifest, out=tmp_path / "o.gguf"))
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "twice.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pearzoo-")]


def test_format_safetensors_and_dry_run(tmp_path):
    (tmp_path / "src").mkdir()
    src = write_tiny_llama_gguf(tmp_path / "src" / "tiny.gguf", "Q8_0")
    manifest = _manifest(src, tmp_path)
    dry = patch_model(PatchOptions(model=str(src), manifest=manifest, out=tmp_path / "d.gguf", dry_run=True))
    assert dry.out is None and dry.format == "gguf" and not (tmp_path / "d.gguf").exists()
    folder = patch_model(PatchOptions(model=str(src), manifest=manifest, out=tmp_path / "st", format="safetensors"))
    assert folder.format == "safetensors" and (tmp_path / "st" / "config.json").is_file()


def test_format_gguf_needs_a_gguf_source(tiny_dir, manifest_doc, tmp_path):
    manifest_file = write_json(manifest_doc, tmp_path / "m.json")
    with pytest.raises(InvalidInputError, match=r"--format gguf needs a GGUF source"):
        patch_model(PatchOptions(model=str(tiny_dir), manifest=manifest_file, out=tmp_path / "x.gguf", format="gguf"))


def test_not_a_gguf(tmp_path):
    from pearzoo.formats.gguf import open_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.array([3], "<u4").tobytes() + b"\xff" * 10)
    with pytest.raises(InvalidInputError, match=r"not a readable GGUF file \(truncated header\)"):
        open_gguf(bad)
    bad.write_bytes(b"NOPE" * 10)
    with pytest.raises(InvalidInputError, match=r"no GGUF magic"):
        open_gguf(bad)


def test_cli_patch_gguf(tmp_path, capsys):
    import json

    from cli_run import assert_one_error, run_cli

    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf", "Q5_1")
    manifest = _manifest(src, tmp_path)
    code, out, err = run_cli(["patch", str(src), "--manifest", str(manifest), "--out", str(tmp_path / "p.gguf"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["format"] == "gguf"
    code, out, err = run_cli(["patch", str(tmp_path / "p.gguf"), "--manifest", str(manifest), "--out", str(tmp_path / "q.gguf")], capsys)
    assert code == 5
    assert_one_error(err, f"{tmp_path / 'p.gguf'} is already patched by pearzoo")
