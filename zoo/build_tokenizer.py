"""Train the zoo's byte-level BPE tokenizer on the training text and pre-tokenize the data.

Reads zoo/.build/{train,val}.txt (from collect_data.py). Writes the tokenizer as a transformers
fast tokenizer to zoo/tokenizer/ (committed) and the token streams as little-endian uint16 to
zoo/.build/{train,val}.u16 (git-ignored; carried to the GPU machine), with their digests in
zoo/tokens.json (committed).

    python3 zoo/build_tokenizer.py [--config zoo/config.yaml]
    python3 zoo/build_tokenizer.py --encode-only    # the committed tokenizer; streams checked against tokens.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ZOO = Path(__file__).resolve().parent
BUILD = ZOO / ".build"


def documents(split: str, separator: str) -> list[str]:
    return (BUILD / f"{split}.txt").read_text(encoding="utf-8").split(separator)


def train_bpe(docs: list[str], cfg: dict) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2 style: bytes mapped to printable characters, regex pre-split, no prefix space, so any
    # byte string round-trips and every id is reachable.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"],
        min_frequency=cfg["min_frequency"],
        special_tokens=cfg["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def as_transformers(tok: Tokenizer, special: str) -> PreTrainedTokenizerFast:
    # One special token serves as BOS/EOS/PAD/UNK, as in GPT-2; the copy task skips it.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, unk_token=special, pad_token=special,
        model_max_length=512, clean_up_tokenization_spaces=False,
    )


def encode_stream(tok: Tokenizer, docs: list[str], sep_id: int) -> np.ndarray:
    """Documents encoded and joined by the separator id, as one flat uint16 stream."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(sep_id)
    return np.asarray(ids, dtype="<u2")


def encode_committed(train_docs: list[str], val_docs: list[str], separator: str) -> None:
    tok = Tokenizer.from_file(str(ZOO / "tokenizer" / "tokenizer.json"))
    expected = json.loads((ZOO / "tokens.json").read_text())
    sep_id = tok.token_to_id(separator)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        raw = encode_stream(tok, docs, sep_id).tobytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected[split]["sha256"]:
            raise SystemExit(f"{split}.u16: sha256 {digest} differs from zoo/tokens.json's {expected[split]['sha256']}")
        (BUILD / f"{split}.u16").write_bytes(raw)
        print(f"{split}.u16: {len(raw) // 2} tokens, sha256 {digest} (as in zoo/tokens.json)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ZOO / "config.yaml")
    parser.add_argument("--encode-only", action="store_true",
                        help="skip training (8 minutes on 2 cores): encode with the committed zoo/tokenizer/ and "
                             "check both streams against zoo/tokens.json")
    args = parser.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    separator = cfg["data"]["separator"]

    train_docs = documents("train", separator)
    if args.encode_only:
        encode_committed(train_docs, documents("val", separator), separator)
        return
    tok = train_bpe(train_docs, cfg["tokenizer"])
    assert tok.get_vocab_size() <= 65536, "uint16 stream"
    out = ZOO / "tokenizer"
    as_transformers(tok, cfg["tokenizer"]["special_tokens"][0]).save_pretrained(out)
    sep_id = tok.token_to_id(separator)

    record = {"vocab_size": tok.get_vocab_size(), "separator_id": sep_id,
              "tokenizer_json_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()}
    for split, docs in (("train", train_docs), ("val", documents("val", separator))):
        stream = encode_stream(tok, docs, sep_id)
        raw = stream.tobytes()
        (BUILD / f"{split}.u16").write_bytes(raw)
        record[split] = {"tokens": int(stream.size), "sha256": hashlib.sha256(raw).hexdigest(),
                         "bytes_per_token": round((BUILD / f"{split}.txt").stat().st_size / stream.size, 3)}
    (ZOO / "tokens.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
