"""Numbers measured on the retrained zoo models, checked here instead of in the unit tests.

    python bench/zoo_pins.py            # prints the measured values as JSON; exits 1 if one moved

A retrained zoo model changes these numbers without anything being wrong, so CI must not fail on them; this
script records them next to the zoo and says when a retrain moved one (then update PINS and the README).

- `retrieval/gpt2-learned`: which key-value contexts the zoo's gpt2-learned (8x384, zoo run 3) retrieves
  (P=20, seed 1234; contexts 0-15 with the queried pair first, 0-3 in the middle and last). Moved out of
  tests/test_retrieval.py, which keeps the checks that do not depend on the weights.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO_GPT2 = ROOT / "zoo" / "models" / "gpt2-learned"

# Measured on CPU, float32.
PINS = {"retrieval/gpt2-learned": {"first": [3], "middle": [], "last": []}}


def retrieval_hits() -> dict[str, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pearzoo.retrieval import POSITIONS, encode_context, pad_id, sample_contexts, score_contexts

    model = AutoModelForCausalLM.from_pretrained(ZOO_GPT2, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ZOO_GPT2)
    hits = {}
    for pos in POSITIONS:
        contexts = sample_contexts(20, 16 if pos == "first" else 4, pos, seed=1234)
        scored = score_contexts(model, [encode_context(tok, c) for c in contexts], pad_id=pad_id(tok))
        hits[pos] = [j for j, hit in enumerate(scored) if hit]
    return hits


def main() -> int:
    import torch
    import transformers

    measured = {"retrieval/gpt2-learned": retrieval_hits()}
    moved = sorted(name for name, value in measured.items() if value != PINS[name])
    print(json.dumps({
        "measured": measured,
        "moved": moved,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }, indent=2))
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
