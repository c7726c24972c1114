"""Random-token copy accuracy of a causal LM (pear-method spec section 1).

n ids are drawn uniformly, with replacement, from the vocabulary minus the tokenizer's special
ids (as pearzoo.proxy does); the input is those n ids twice (2n tokens, no BOS). Accuracy is
the mean, over the predictions made at 0-indexed positions n..2n-2, of argmax == next token.

    python3 zoo/copy_accuracy.py zoo/models/llama-rope [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DEFAULT_N = (10, 25, 50)


def allowed_ids(vocab_size: int, special_ids: list[int]) -> torch.Tensor:
    ids = torch.arange(vocab_size, dtype=torch.int64)
    return ids[~torch.isin(ids, torch.tensor(sorted(special_ids), dtype=torch.int64))]


def copy_sequences(allowed: torch.Tensor, count: int, n: int, seed: int) -> torch.Tensor:
    # One stream per (seed, n): adding sequences or another n never changes the ones already drawn.
    gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
    half = allowed[torch.randint(0, allowed.numel(), (count, n), generator=gen)]
    return torch.cat([half, half], dim=1)


@torch.no_grad()
def copy_accuracy(model, sequences: torch.Tensor, batch_size: int = 250) -> float:
    n = sequences.shape[1] // 2
    device = model.get_input_embeddings().weight.device
    correct = 0
    for start in range(0, sequences.shape[0], batch_size):
        batch = sequences[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        pred = logits[:, n : 2 * n - 1].argmax(-1)
        correct += (pred == batch[:, n + 1 : 2 * n]).sum().item()
    return correct / (sequences.shape[0] * (n - 1))


def measure(model, vocab_size: int, special_ids: list[int], ns=DEFAULT_N, count: int = 1000, seed: int = 0,
            batch_size: int = 250) -> dict[str, float]:
    """Copy accuracy for each n, keyed by str(n) so the result serialises to JSON unchanged."""
    allowed = allowed_ids(vocab_size, special_ids)
    return {str(n): copy_accuracy(model, copy_sequences(allowed, count, n, seed), batch_size) for n in ns}


HEX = "0123456789abcdef"


def kv_prompts(pairs: int, count: int, position: str, seed: int) -> list[tuple[str, str]]:
    """(prompt, value) for lost-in-the-middle key-value lookups in the text form of pearzoo's eval
    (pearzoo/retrieval.py: a dict literal of 3-hex ids and `assert data["k"] == "`), drawn from a stream of
    our own: a quick training-side check, not the published numbers (those come from `pearzoo eval`)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * pairs)
    index = {"first": 0, "middle": pairs // 2, "last": pairs - 1}[position]
    out = []
    for _ in range(count):
        ids: list[str] = []
        while len(ids) < 2 * pairs:
            x = "".join(HEX[i] for i in torch.randint(0, 16, (3,), generator=gen).tolist())
            if x not in ids:
                ids.append(x)
        kv = list(zip(ids[:pairs], ids[pairs:]))
        queried = kv.pop(0)
        kv.insert(index, queried)
        items = ", ".join(f'"{k}": "{v}"' for k, v in kv)
        out.append((f'data = {{{items}}}\nassert data["{queried[0]}"] == "', queried[1]))
    return out


@torch.no_grad()
def kv_retrieval(model, tokenizer, pairs: int = 20, count: int = 100, seed: int = 0,
                 positions=("first", "middle", "last")) -> dict[str, float]:
    """Exact match of greedy decoding (the value and its closing quote) per position of the queried pair."""
    device = model.get_input_embeddings().weight.device
    result = {}
    for position in positions:
        hits = 0
        for prompt, value in kv_prompts(pairs, count, position, seed):
            ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=device)
            for _ in range(4):
                nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
            hits += tokenizer.decode(ids[0, -4:].tolist()).startswith(value + '"')
        result[position] = hits / count
    return result


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N))
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--kv", action="store_true", help="also key-value retrieval at 20 pairs (100 contexts)")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    result = measure(model, model.config.vocab_size, tok.all_special_ids, args.n, args.sequences, args.seed,
                     args.batch_size)
    report = {"model": str(args.model), "device": args.device, "dtype": args.dtype,
              "sequences": args.sequences, "seed": args.seed, "copy_accuracy": result}
    if args.kv:
        report["kv_retrieval_p20"] = kv_retrieval(model, tok, seed=args.seed)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
