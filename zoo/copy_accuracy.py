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
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    result = measure(model, model.config.vocab_size, tok.all_special_ids, args.n, args.sequences, args.seed,
                     args.batch_size)
    print(json.dumps({"model": str(args.model), "device": args.device, "dtype": args.dtype,
                      "sequences": args.sequences, "seed": args.seed, "copy_accuracy": result}))


if __name__ == "__main__":
    main()
