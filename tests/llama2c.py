"""Convert a llama2.c checkpoint and tokenizer into a Hugging Face transformers Llama directory.

llama2.c (Karpathy) stores its small Llama-2-style models in a flat "legacy" (version 0) format: a
header of 7 int32 followed by fp32 tensors, and the tokenizer in its own `tokenizer.bin`. The output
of [`convert_llama2c`] loads with plain `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer`,
which lets tests and tools use those models as real, trained checkpoints without network access.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pearzoo.errors import DiskSpaceError, InvalidInputError

__all__ = ["Llama2cHeader", "convert_llama2c", "read_llama2c_header"]

_HEADER = struct.Struct("<7i")
_FLOAT_BYTES = 4
# llama2.c's RMSNorm epsilon and RoPE base are hard-coded in run.c, not stored in the checkpoint.
_RMS_NORM_EPS = 1e-5
_ROPE_THETA = 10000.0
# llama2.c hard-codes these ids (run.c: BOS=1, EOS=2, byte fallback token = byte + 3).
_UNK_ID, _BOS_ID, _EOS_ID = 0, 1, 2
_BYTE_OFFSET = 3
_SPACE_MARKER = "\u2581"


@dataclass(frozen=True)
class Llama2cHeader:
    """The header of a llama2.c legacy (version 0) checkpoint.

    Attributes:
        dim (`int`): Model width (`hidden_size`).
        hidden_dim (`int`): SwiGLU width (`intermediate_size`).
        n_layers (`int`): Number of transformer blocks.
        n_heads (`int`): Number of query heads.
        n_kv_heads (`int`): Number of key/value heads (GQA when smaller than `n_heads`).
        vocab_size (`int`): Vocabulary size (the absolute value of the stored field).
        seq_len (`int`): Maximum sequence length the model was trained with.
        shared_classifier (`bool`): Whether the classifier is the token embedding; llama2.c
            encodes it as the sign of the stored `vocab_size` (positive means shared).
    """

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    @property
    def n_floats(self) -> int:
        """Number of fp32 values after the header, as llama2.c's `memory_map_weights` walks them."""
        d, h, n = self.dim, self.hidden_dim, self.n_layers
        count = self.vocab_size * d  # tok_emb
        count += n * d  # rms_att
        count += n * d * d + 2 * n * d * self.kv_dim + n * d * d  # wq, wk, wv, wo
        count += n * d  # rms_ffn
        count += 3 * n * d * h  # w1, w2, w3
        count += d  # rms_final
        # The legacy format still carries the precomputed freq_cis_real/imag, which run.c skips.
        count += self.seq_len * self.head_size
        if not self.shared_classifier:
            count += self.vocab_size * d
        return count

    @property
    def file_size(self) -> int:
        """Exact byte size of a checkpoint with this header."""
        return _HEADER.size + self.n_floats * _FLOAT_BYTES


def read_llama2c_header(path: str | Path) -> Llama2cHeader:
    """Read and validate the header of a llama2.c legacy (version 0) checkpoint.

    The header alone decides the file's exact size, so a truncated or padded file is rejected here
    rather than producing a silently shifted model.

    Args:
        path (`str` or `Path`):
            The checkpoint file (for example `stories260K.bin`).

    Returns:
        [`Llama2cHeader`]: The header fields, with `vocab_size` made positive and its sign moved
        into `shared_classifier`.

    Raises:
        [`~pearzoo.errors.InvalidInputError`]:
            If the file cannot be read, the header is implausible, or the file size does not match
            what the header implies.

    Example:
        ```python
        >>> from llama2c import read_llama2c_header
        >>> header = read_llama2c_header("tests/data/llama2c-stories260K/stories260K.bin")
        >>> header.dim, header.n_layers, header.n_kv_heads, header.shared_classifier
        (64, 5, 4, True)
        ```
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(_HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read llama2.c checkpoint: {exc.strerror or exc}", path=path) from exc
    if len(raw) < _HEADER.size:
        raise InvalidInputError(
            f"{path}: {size} bytes is too short for a llama2.c header ({_HEADER.size} bytes)", path=path
        )
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = _HEADER.unpack(raw)
    fields = {
        "dim": dim,
        "hidden_dim": hidden_dim,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": abs(vocab_size),
        "seq_len": seq_len,
    }
    for name, value in fields.items():
        if value <= 0:
            raise InvalidInputError(f"{path}: header field {name}={value} must be positive", path=path, field=name)
    if dim % n_heads or (dim // n_heads) % 2:
        raise InvalidInputError(
            f"{path}: header dim={dim} must split into n_heads={n_heads} heads of even size (RoPE rotates pairs)",
            path=path,
            field="dim",
        )
    if n_heads % n_kv_heads:
        raise InvalidInputError(
            f"{path}: header n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}",
            path=path,
            field="n_kv_heads",
        )
    header = Llama2cHeader(**fields, shared_classifier=vocab_size > 0)
    if size != header.file_size:
        raise InvalidInputError(
            f"{path}: file is {size} bytes but its llama2.c header implies {header.file_size}"
            " (truncated, or not a legacy version-0 checkpoint)",
            path=path,
            expected=header.file_size,
            actual=size,
        )
    return header


def _permute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    # llama2.c rotates interleaved pairs (rows 2i, 2i+1 of each head); HF Llama's rotate_half pairs
    # row i with row i + head_size/2. Reordering the projection rows makes both compute the same
    # attention scores (the same permutation as transformers' convert_llama_weights_to_hf.py).
    rows, cols = weight.shape
    head_size = rows // n_heads
    return weight.reshape(n_heads, head_size // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _read_tensors(path: Path, header: Llama2cHeader) -> dict[str, np.ndarray]:
    try:
        flat = np.fromfile(path, dtype="<f4", offset=_HEADER.size)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read llama2.c checkpoint: {exc.strerror or exc}", path=path) from exc
    if flat.size != header.n_floats:
        # The header check stats the file; this guards against it changing between the two reads.
        raise InvalidInputError(
            f"{path}: holds {flat.size} floats but its header implies {header.n_floats}", path=path
        )

    offset = 0

    def take(*shape: int) -> np.ndarray:
        nonlocal offset
        count = int(np.prod(shape))
        block = flat[offset : offset + count].reshape(shape)
        offset += count
        return block

    h, L = header, header.n_layers
    tok_emb = take(h.vocab_size, h.dim)
    rms_att = take(L, h.dim)
    wq = take(L, h.dim, h.dim)
    wk = take(L, h.kv_dim, h.dim)
    wv = take(L, h.kv_dim, h.dim)
    wo = take(L, h.dim, h.dim)
    rms_ffn = take(L, h.dim)
    w1 = take(L, h.hidden_dim, h.dim)
    w2 = take(L, h.dim, h.hidden_dim)
    w3 = take(L, h.hidden_dim, h.dim)
    rms_final = take(h.dim)
    take(h.seq_len * h.head_size)  # freq_cis_real + freq_cis_imag: recomputed by transformers
    wcls = tok_emb if h.shared_classifier else take(h.vocab_size, h.dim)

    tensors = {"model.embed_tokens.weight": tok_emb, "model.norm.weight": rms_final}
    for i in range(L):
        prefix = f"model.layers.{i}."
        tensors[prefix + "input_layernorm.weight"] = rms_att[i]
        tensors[prefix + "self_attn.q_proj.weight"] = _permute_rope_rows(wq[i], h.n_heads)
        tensors[prefix + "self_attn.k_proj.weight"] = _permute_rope_rows(wk[i], h.n_kv_heads)
        tensors[prefix + "self_attn.v_proj.weight"] = wv[i]
        tensors[prefix + "self_attn.o_proj.weight"] = wo[i]
        tensors[prefix + "post_attention_layernorm.weight"] = rms_ffn[i]
        tensors[prefix + "mlp.gate_proj.weight"] = w1[i]
        tensors[prefix + "mlp.up_proj.weight"] = w3[i]
        tensors[prefix + "mlp.down_proj.weight"] = w2[i]
    if not h.shared_classifier:
        # With a tied head transformers rebuilds lm_head from the embedding, and a stored copy would
        # be reported as an unexpected key.
        tensors["lm_head.weight"] = wcls
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}


def _read_tokenizer(path: Path, vocab_size: int) -> list[tuple[str, float]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read llama2.c tokenizer: {exc.strerror or exc}", path=path) from exc
    # The file does not store its vocabulary size; llama2.c takes it from the checkpoint header.
    pieces: list[tuple[str, float]] = []
    offset = 4
    if len(raw) < offset:
        raise InvalidInputError(f"{path}: too short for a llama2.c tokenizer ({len(raw)} bytes)", path=path)
    for token_id in range(vocab_size):
        if offset + 8 > len(raw):
            raise InvalidInputError(
                f"{path}: truncated at token {token_id} of {vocab_size} (vocab_size from the checkpoint)", path=path
            )
        score, length = struct.unpack_from("<fi", raw, offset)
        offset += 8
        if length < 0 or offset + length > len(raw):
            raise InvalidInputError(f"{path}: token {token_id} has a bad length {length}", path=path)
        try:
            text = raw[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{path}: token {token_id} is not valid UTF-8", path=path) from exc
        offset += length
        pieces.append((text, score))
    if offset != len(raw):
        raise InvalidInputError(
            f"{path}: {len(raw) - offset} bytes left after {vocab_size} tokens; the tokenizer does not match"
            " the checkpoint's vocab_size",
            path=path,
        )
    for byte in range(256):
        token_id = byte + _BYTE_OFFSET
        if token_id >= vocab_size or pieces[token_id][0] != f"<0x{byte:02X}>":
            raise InvalidInputError(
                f"{path}: token {token_id} is not the byte-fallback piece <0x{byte:02X}> that llama2.c assumes",
                path=path,
            )
    return pieces


def _build_tokenizer(pieces: list[tuple[str, float]], path: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    # llama2.c's export wrote SentencePiece's "▁" as a plain space and wrapped BOS/EOS in newlines.
    names = [text.replace(" ", _SPACE_MARKER) for text, _ in pieces]
    names[_UNK_ID], names[_BOS_ID], names[_EOS_ID] = "<unk>", "<s>", "</s>"
    vocab = {name: token_id for token_id, name in enumerate(names)}
    if len(vocab) != len(names):
        raise InvalidInputError(f"{path}: two tokens map to the same piece", path=path)

    # Only normal pieces are merged; control and byte pieces are never BPE outputs in SentencePiece.
    normal = {names[i]: (score, i) for i, (_, score) in enumerate(pieces) if i >= _BYTE_OFFSET + 256}
    ranked = []
    for merged, (score, token_id) in normal.items():
        for split in range(1, len(merged)):
            left, right = merged[:split], merged[split:]
            if left in normal and right in normal:
                ranked.append((-score, token_id, vocab[left], vocab[right], left, right))
    # SentencePiece BPE (and llama2.c's encode) merge the adjacent pair whose result has the highest
    # score, so merge rank follows the merged piece's score.
    merges = [(left, right) for *_, left, right in sorted(ranked)]

    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    # A normalizer rather than a Metaspace pre-tokenizer: Metaspace skips the dummy prefix when the
    # text already starts with a space, while llama2.c (like SentencePiece) always adds it.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(_SPACE_MARKER), normalizers.Replace(" ", _SPACE_MARKER)]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(_SPACE_MARKER, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            # llama2.c's decode drops the dummy-prefix space of the first piece after BOS.
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", _BOS_ID)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(name, special=True, normalized=False) for name in ("<unk>", "<s>", "</s>")]
    )
    return tokenizer


def _write_tokenizer(tokenizer, directory: Path, seq_len: int) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        # The generic fast class loads tokenizer.json as written; LlamaTokenizer would rebuild the
        # pipeline with a Metaspace pre-tokenizer and lose the always-on dummy prefix.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": seq_len,
        "padding_side": "left",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_model(header: Llama2cHeader, tensors: dict[str, np.ndarray], directory: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import GenerationConfig, LlamaConfig

    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_size,
        hidden_act="silu",
        max_position_embeddings=header.seq_len,
        rms_norm_eps=_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": _ROPE_THETA},
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(directory)
    GenerationConfig(bos_token_id=_BOS_ID, eos_token_id=_EOS_ID).save_pretrained(directory)
    # The "format" metadata is what transformers' own save_pretrained writes; 4.x refused files without it.
    weights = directory / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    # safetensors creates its file owner-only (0600); give it the umask-derived mode of its siblings.
    os.chmod(weights, (directory / "config.json").stat().st_mode & 0o777)


def convert_llama2c(checkpoint: str | Path, tokenizer: str | Path | None, out_dir: str | Path) -> Path:
    """Convert a llama2.c legacy checkpoint (and tokenizer) into a transformers Llama directory.

    The output holds `config.json`, `generation_config.json` and `model.safetensors` (fp32), plus
    `tokenizer.json` and `tokenizer_config.json` when a tokenizer is given. The query and key
    projections are re-ordered from llama2.c's interleaved RoPE pairs to transformers' rotate-half
    layout, so the converted model computes the same logits. The tokenizer is a SentencePiece-style
    BPE with byte fallback whose merges are ranked by the score of the merged piece, which
    reproduces llama2.c's greedy-merge `encode`.

    Everything is read and checked before anything is written, and the directory is assembled
    beside the target and renamed into place, so a failure leaves no output directory behind.

    Args:
        checkpoint (`str` or `Path`):
            The llama2.c legacy (version 0) checkpoint, e.g. `stories260K.bin`.
        tokenizer (`str`, `Path` or `None`):
            The llama2.c `tokenizer.bin` matching the checkpoint's vocabulary, e.g. `tok512.bin`;
            `None` writes the model only.
        out_dir (`str` or `Path`):
            The directory to create. It must not exist, or be empty.

    Returns:
        `Path`: `out_dir`, now holding the converted model.

    Raises:
        [`~pearzoo.errors.InvalidInputError`]:
            If a file cannot be read, is truncated or does not match its header, the tokenizer does
            not match the checkpoint, or `out_dir` exists and is not an empty directory.
        [`~pearzoo.errors.DiskSpaceError`]:
            If the disk fills up while writing.

    Example:
        ```python
        >>> from llama2c import convert_llama2c
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> out = convert_llama2c("stories260K.bin", "tok512.bin", "/tmp/stories260K")
        >>> model = AutoModelForCausalLM.from_pretrained(out)
        >>> tok = AutoTokenizer.from_pretrained(out)
        >>> ids = model.generate(tok("", return_tensors="pt").input_ids, max_new_tokens=9, do_sample=False)
        >>> tok.decode(ids[0], skip_special_tokens=True)
        'Once upon a time, there was a little'
        ```
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    header = read_llama2c_header(checkpoint)
    tensors = _read_tensors(checkpoint, header)
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        # Built before writing starts, so a tokenizer that cannot be converted leaves nothing behind.
        fast_tokenizer = _build_tokenizer(_read_tokenizer(tokenizer, header.vocab_size), tokenizer)

    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise InvalidInputError(f"{out_dir}: output exists and is not an empty directory", path=out_dir)
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir (not mkdtemp) so the final directory gets the usual umask permissions, not 0700.
    staging = parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        _write_model(header, tensors, staging)
        if tokenizer is not None:
            _write_tokenizer(fast_tokenizer, staging, header.seq_len)
        os.replace(staging, out_dir)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(f"{parent}: no space left while writing the converted model", path=parent) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
