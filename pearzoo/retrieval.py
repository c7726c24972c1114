"""Key-value retrieval (issue #4), in the style of the lost-in-the-middle benchmark (Liu et al., 2023).

A context holds P key-value pairs of random ids, written as a Python dict literal (which is also a JSON
object), and ends by asking for one key's value; the model must reproduce the value exactly. Accuracy is
swept over where the queried pair sits: first, middle (0-based index P // 2) or last.

    data = {"3fa": "09b", "e1d": "7af", ..., "c40": "5e2"}
    assert data["e1d"] == "7af"

Choices, and why:

- **Ids are 3 random lowercase hex characters** (4096 values; the 2P ids of one context are distinct).
  Lost-in-the-middle uses UUIDs, but those take 25-30 tokens each. pearzoo's zoo models have 512
  positions, and with their code-trained 8192-token BPE 50 pairs of 3-hex ids take at most 452 tokens
  (the 300 contexts of seed 1234; 4-hex ids reach about 520, 8-hex ids about 750). SmolLM2's tokenizer
  splits digits, so the same contexts take at most 501 tokens there. `id_chars` changes the length.
- **A code form, not the benchmark's prose.** The dict literal plus ``assert data[key] == "`` is natural
  to code-trained and chat models alike, and it is the shortest form measured: the prose prompt
  (``Extract the value ... JSON data: ... Key: "k" Corresponding value:``) with one pair per line costs
  about 80 more tokens at 50 pairs (too many for 512 positions) and scored no better on SmolLM2-135M
  (20 contexts of 20 pairs of 4-hex ids: 0.90 / 0.10 / 0.10 against 0.95 / 0.05 / 0.15, first / middle /
  last).
- **No chat template.** The text is tokenized as it is, with the tokenizer's default special tokens (a BOS
  where the tokenizer adds one, as ``tokenizer(text)`` does), like the copy task and any base model.
- **Exact match by teacher-forced argmax.** The answer tokens are the tokens of the full string
  (context + value + closing quote) that overlap the value's characters, so a BPE merge across the quote
  boundary is handled: the context stops before the first such token. A context counts as retrieved when
  the argmax at every answer position is the answer token. That is exactly what greedy decoding of as many
  tokens would produce: if every argmax is right, greedy decoding follows the answer token by token;
  at the first wrong argmax, greedy decoding emits that wrong token. One forward pass replaces m decoding
  steps. (It is token-level exact match: a greedy output that spells the value with other tokens counts
  as wrong.)
- **Paired positions.** Context j of a given P has the same pairs and the same queried pair at every
  position; only the queried pair moves. Position differences are then not sampling noise between
  different contexts. Contexts come from the stream ``eval/kv/<P>`` of the eval seed, which no build uses.
- **Batched with right padding.** Contexts are sorted by length and right-padded (with an attention mask);
  a causal model's logits at a real token do not depend on later (padding) tokens, and position ids start
  at 0 for every row, so batched scores equal unbatched ones (tested).
- **Contexts longer than the model's positions are not scored.** The limit is the config's
  ``max_position_embeddings`` / ``n_positions``, else the tokenizer's ``model_max_length`` (for ALiBi
  models, the trained length). A P whose longest context exceeds it is reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pearzoo.errors import InvalidInputError
from pearzoo.proxy import generator, input_device

POSITIONS = ("first", "middle", "last")
DEFAULT_PAIRS = (20, 50)
DEFAULT_CONTEXTS = 100
ID_CHARS = 3


@dataclass(frozen=True)
class KVContext:
    """P key-value pairs and the index of the queried one."""

    pairs: tuple[tuple[str, str], ...]
    query: int

    @property
    def key(self) -> str:
        return self.pairs[self.query][0]

    @property
    def value(self) -> str:
        return self.pairs[self.query][1]

    @property
    def prompt(self) -> str:
        """The text up to and including the opening quote of the answer."""
        items = ", ".join(f'"{k}": "{v}"' for k, v in self.pairs)
        return f'data = {{{items}}}\nassert data["{self.key}"] == "'

    @property
    def text(self) -> str:
        """The prompt, the value and the closing quote."""
        return f'{self.prompt}{self.value}"'


def query_index(position: str, pairs: int) -> int:
    """0-based index of the queried pair: first 0, middle P // 2, last P - 1."""
    if position == "first":
        return 0
    if position == "middle":
        return pairs // 2
    if position == "last":
        return pairs - 1
    raise InvalidInputError(f"position '{position}' is not one of {', '.join(POSITIONS)}", field="position")


def _check(pairs: int, id_chars: int) -> None:
    if pairs < 3:
        raise InvalidInputError(f"kv pairs: {pairs} is below 3 (first, middle and last must differ)", field="kv_pairs")
    if not 1 <= id_chars <= 12:
        raise InvalidInputError(f"id_chars: {id_chars} is not in [1, 12]", field="id_chars")
    if 2 * pairs > 16**id_chars // 2:
        # Distinct ids by rejection: keep the id space at least twice the ids a context needs.
        raise InvalidInputError(f"{pairs} pairs need more distinct {id_chars}-character ids than exist", field="kv_pairs")


def _distinct_ids(count: int, id_chars: int, gen: torch.Generator) -> list[str]:
    seen: dict[int, None] = {}
    while len(seen) < count:
        for x in torch.randint(0, 16**id_chars, (count,), generator=gen).tolist():
            seen.setdefault(x, None)
            if len(seen) == count:
                break
    return [f"{x:0{id_chars}x}" for x in seen]


def sample_contexts(
    pairs: int, count: int, position: str, seed: int, id_chars: int = ID_CHARS
) -> list[KVContext]:
    """`count` contexts of `pairs` pairs with the queried pair at `position`.

    The ids of context j depend only on (`seed`, `pairs`, j), not on `position` (paired design).

    Raises:
        InvalidInputError: fewer than 3 pairs, an unknown position, or too few distinct ids.
    """
    _check(pairs, id_chars)
    index = query_index(position, pairs)
    gen = generator(seed, f"eval/kv/{pairs}")
    out = []
    for _ in range(count):
        ids = _distinct_ids(2 * pairs, id_chars, gen)
        kv = list(zip(ids[:pairs], ids[pairs:]))
        queried = kv.pop(0)  # the pair drawn first is the one queried
        kv.insert(index, queried)
        out.append(KVContext(tuple(kv), index))
    return out


@dataclass(frozen=True)
class Encoded:
    """Token ids of a context through its last answer token; answer tokens are ids[start:]."""

    ids: tuple[int, ...]
    start: int


def encode_context(tokenizer: Any, context: KVContext) -> Encoded:
    """Tokenize the full text and cut it after the last token that overlaps the value.

    Raises:
        InvalidInputError: the tokenizer cannot report character offsets (not a fast tokenizer).
    """
    text = context.text
    try:
        # verbose=False: the warning about inputs longer than the model is ours to handle (max_positions).
        enc = tokenizer(text, return_offsets_mapping=True, verbose=False)
    except NotImplementedError as exc:
        raise InvalidInputError(
            "key-value retrieval needs a tokenizer with character offsets (a fast tokenizer)",
            hint="pass --no-kv",
            field="tokenizer",
        ) from exc
    a = len(context.prompt)
    b = a + len(context.value)
    span = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a]
    return Encoded(tuple(enc["input_ids"][: span[-1] + 1]), span[0])


def answer_predictions(model: Any, encoded: list[Encoded], batch_size: int = 16, pad_id: int = 0) -> list[torch.Tensor]:
    """Per context, the argmax token at each answer position (teacher-forced), as a 1-D int64 tensor."""
    device = input_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    preds: list[torch.Tensor] = [torch.empty(0, dtype=torch.int64)] * len(encoded)
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            rows = [encoded[i] for i in order[lo : lo + batch_size]]
            width = max(len(r.ids) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
            mask = torch.zeros((len(rows), width), dtype=torch.int64)
            for j, r in enumerate(rows):
                ids[j, : len(r.ids)] = torch.tensor(r.ids)
                mask[j, : len(r.ids)] = 1
            # Only positions from the earliest answer start on are projected onto the vocabulary.
            keep = width - min(r.start for r in rows) + 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=keep)
            argmax = out.logits.argmax(-1).cpu()
            first = width - keep  # absolute position of argmax[:, 0]
            for j, r in enumerate(rows):
                # The token at position t is predicted at position t - 1.
                preds[order[lo + j]] = argmax[j, r.start - 1 - first : len(r.ids) - 1 - first]
    return preds


def score_contexts(model: Any, encoded: list[Encoded], batch_size: int = 16, pad_id: int = 0) -> list[bool]:
    """Exact match per context: every answer token is the argmax given the tokens before it."""
    preds = answer_predictions(model, encoded, batch_size, pad_id)
    return [bool(torch.equal(p, torch.tensor(e.ids[e.start :]))) for p, e in zip(preds, encoded)]


def max_positions(model: Any, tokenizer: Any) -> int | None:
    """The longest input the model takes: config positions, else the tokenizer's model_max_length."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    # transformers uses a huge sentinel (int(1e30)) when the tokenizer sets no limit.
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    return None


def pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0
