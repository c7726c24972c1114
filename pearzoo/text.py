"""Held-out natural text for the perplexity budget (issue #2) and the eval report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pearzoo.errors import InvalidInputError, NotFoundError
from pearzoo.proxy import input_device

DATA_DIR = Path(__file__).resolve().parent / "data"


def builtin_texts() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.txt"))


def read_text(ref: str) -> str:
    """`builtin:<name>` (a file shipped in pearzoo/data) or a path to a UTF-8 file."""
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        path = DATA_DIR / f"{name}.txt"
        if not path.is_file():
            raise NotFoundError(f"text '{ref}' is not built in (have: {', '.join(builtin_texts())})", text=ref)
    else:
        path = Path(ref)
        if not path.is_file():
            raise NotFoundError(f"text file '{ref}' not found", path=ref)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text", path=str(path)) from exc


def text_windows(tokenizer: Any, text: str, windows: int, length: int, offset: int = 0) -> torch.Tensor:
    """`windows` consecutive, non-overlapping windows of `length` token ids, starting `offset` windows in.

    Raises:
        InvalidInputError: no tokenizer, or the text is too short.
    """
    if tokenizer is None:
        raise InvalidInputError("perplexity needs a tokenizer, and the model has none", field="tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = (offset + windows) * length
    if len(ids) < need:
        raise InvalidInputError(f"text has {len(ids)} tokens; {need} are needed for {windows} windows of {length}")
    t = torch.tensor(ids[offset * length : need], dtype=torch.int64)
    return t.view(windows, length)


def _predicting_logits(model: Any, batch: torch.Tensor) -> torch.Tensor:
    # Every position but the last predicts a token of the window. Asking for those positions (a tensor of them)
    # skips the last one's vocabulary projection and gives contiguous logits; slicing the full logits instead
    # made `reshape` copy them (a [8, 127, 49152] float32 copy per SmolLM2 batch). Same values either way.
    positions = torch.arange(batch.shape[1] - 1, device=batch.device)
    return model(input_ids=batch, use_cache=False, logits_to_keep=positions).logits.float()


def text_loss(model: Any, windows: torch.Tensor) -> torch.Tensor:
    """Differentiable mean next-token cross-entropy over a batch of windows."""
    batch = windows.to(input_device(model))
    logits = _predicting_logits(model, batch)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].to(logits.device).reshape(-1))


def perplexity(model: Any, windows: torch.Tensor, batch_size: int = 8) -> float:
    """exp of the mean next-token cross-entropy over all windows."""
    total = 0.0
    count = 0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(input_device(model))
            logits = _predicting_logits(model, batch)
            target = batch[:, 1:].to(logits.device)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
            count += target.numel()
    return math.exp(total / count)
