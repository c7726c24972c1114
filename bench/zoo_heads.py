"""Attention diagnostics of the zoo models on the random-token copy task: previous-token and induction heads.

    python bench/zoo_heads.py zoo/models/llama-rope zoo/models/gpt2-learned zoo/models/bloom-alibi

Copying repeated random ids needs an induction circuit: a previous-token head (position i attends to i-1) and
an induction head (a second-half position i attends to i-n+1, the token after the earlier occurrence of x_i).
For `--sequences` sequences of n = `--length` ids drawn as `pearzoo.proxy` draws them (no BOS), eager attention
weights give, per head: the mean weight on i-1 (positions 1..2n-1) and the mean weight on i-n+1 (second-half
positions n..2n-2). Prints, per model, each layer's best head on each score, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def scores(model_dir: Path, length: int, sequences: int, seed: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(1, vocab, (sequences, length), generator=g)  # id 0 is the zoo's only special token
    ids = torch.cat([half, half], 1)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    n, T = length, 2 * length
    rows = torch.arange(1, T)
    ind_rows = torch.arange(n, T - 1)
    layers = []
    for layer, att in enumerate(out.attentions):  # [batch, heads, T, T]
        prev = att[:, :, rows, rows - 1].mean((0, 2))
        induction = att[:, :, ind_rows, ind_rows - n + 1].mean((0, 2))
        layers.append({
            "layer": layer,
            "previous_token": [round(v, 3) for v in prev.tolist()],
            "induction": [round(v, 3) for v in induction.tolist()],
        })
    logits = out.logits[:, n - 1 : T - 1]
    pred = logits[:, 1:].argmax(-1)
    target = ids[:, n + 1 : T]
    acc = (pred == target).float().mean().item()
    # Where the wrong predictions come from: another id of the sequence (attention at the wrong position) or an
    # id not in it (the copied signal lost against the model's prior); and the correct id's rank.
    in_context = (pred[:, :, None] == half[:, None, :]).any(-1)
    wrong = pred != target
    rank = (logits[:, 1:] > logits[:, 1:].gather(-1, target[..., None])).sum(-1).float()
    errors = {"wrong_in_context": round((wrong & in_context).float().mean().item(), 3),
              "wrong_not_in_context": round((wrong & ~in_context).float().mean().item(), 3),
              "median_rank_of_correct": rank.median().item()}
    # Copying by how trained the id's embedding is (its row norm, a proxy for its frequency in the corpus).
    norms = model.get_input_embeddings().weight.norm(dim=-1)
    by_norm = norms[target] >= norms[1:].median()
    correct = (pred == target).float()
    errors["accuracy_high_norm_ids"] = round(correct[by_norm].mean().item(), 3)
    errors["accuracy_low_norm_ids"] = round(correct[~by_norm].mean().item(), 3)
    return {"model": model_dir.name, "copy_accuracy": round(acc, 3), "errors": errors,
            "best_previous_token": max(max(l["previous_token"]) for l in layers),
            "best_induction": max(max(l["induction"]) for l in layers), "layers": layers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--length", type=int, default=25)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    report = [scores(m, args.length, args.sequences, args.seed) for m in args.models]
    print(json.dumps(report, indent=1))
    for r in report:
        e = r["errors"]
        print(f"{r['model']}: copy {r['copy_accuracy']:.3f} (n={args.length}); best previous-token head {r['best_previous_token']:.3f}, "
              f"best induction head {r['best_induction']:.3f}; wrong: {e['wrong_in_context']:.3f} another id of the sequence, "
              f"{e['wrong_not_in_context']:.3f} an id not in it; median rank of the right id {e['median_rank_of_correct']:.0f}; "
              f"accuracy on ids with embedding norm above / below the median {e['accuracy_high_norm_ids']:.3f} / {e['accuracy_low_norm_ids']:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
