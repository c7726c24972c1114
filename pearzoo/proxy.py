"""The random-token copying proxy task (spec §1): sampling, copy accuracy and copy loss."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pearzoo.errors import InvalidInputError
from pearzoo.recipe.schema import ProxyTask


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of a build, stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@dataclass(frozen=True)
class TokenSpace:
    """The ids the proxy task draws from, and the optional BOS id."""

    allowed: torch.Tensor  # 1-D int64, sorted
    bos_id: int | None

    @property
    def prefix(self) -> int:
        return 0 if self.bos_id is None else 1


def token_space(proxy: ProxyTask, vocab_size: int, special_ids: set[int], bos_id: int | None) -> TokenSpace:
    """Ids in the recipe's range minus the special ids.

    Raises:
        InvalidInputError: fewer than two usable ids, or BOS requested but the model has none.
    """
    low, high = proxy.token_range
    high = vocab_size if high is None else min(high, vocab_size)
    ids = torch.arange(low, high, dtype=torch.int64)
    if special_ids:
        keep = ~torch.isin(ids, torch.tensor(sorted(special_ids), dtype=torch.int64))
        ids = ids[keep]
    if ids.numel() < 2:
        raise InvalidInputError(f"proxy.token_range [{low}, {high}) leaves {ids.numel()} usable ids", field="proxy.token_range")
    if proxy.bos and bos_id is None:
        raise InvalidInputError("proxy.bos is true but the model config has no bos_token_id", field="proxy.bos")
    return TokenSpace(allowed=ids, bos_id=bos_id if proxy.bos else None)


def sample_sequences(space: TokenSpace, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`count` inputs of `length` random ids repeated twice (optionally after BOS): [count, prefix + 2*length]."""
    idx = torch.randint(0, space.allowed.numel(), (count, length), generator=gen)
    half = space.allowed[idx]
    seq = torch.cat([half, half], dim=1)
    if space.bos_id is not None:
        seq = torch.cat([torch.full((count, 1), space.bos_id, dtype=torch.int64), seq], dim=1)
    return seq


def input_device(model: Any) -> torch.device:
    embeddings = model.get_input_embeddings()
    # Under an accelerate device map the embedding's hook names where it runs; offloaded, its weight is on meta.
    device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else embeddings.weight.device


@dataclass(frozen=True)
class CopyScore:
    accuracy: float
    loss: float
    sequences: int


def _second_half_logits(model: Any, batch: torch.Tensor, length: int, prefix: int) -> torch.Tensor:
    # Logits at positions prefix+n-1 .. prefix+2n-2 predict the second half (spec §3); only those are projected
    # onto the vocabulary. Positions as a tensor (not `logits_to_keep=n+1`, a strided view) gather them into one
    # contiguous block, which the vocabulary projection runs through as one matrix product: about 1.6x faster on
    # CPU, with the same values (tests/test_train_speed.py), and one position fewer.
    device = input_device(model)
    positions = torch.arange(prefix + length - 1, prefix + 2 * length - 1, device=device)
    return model(input_ids=batch.to(device), use_cache=False, logits_to_keep=positions).logits


def copy_score(
    model: Any, sequences: torch.Tensor, length: int, prefix: int = 0, batch_size: int = 32, grad: bool = False
) -> CopyScore:
    """Copy accuracy (spec §1: predictions at positions n..2n-2) and second-half cross-entropy."""
    correct = 0.0
    positions = 0
    loss_sum = 0.0
    tokens = 0
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for start in range(0, sequences.shape[0], batch_size):
            batch = sequences[start : start + batch_size]
            logits = _second_half_logits(model, batch, length, prefix).float()
            targets = batch[:, prefix + length : prefix + 2 * length].to(logits.device)
            loss_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
            tokens += targets.numel()
            # The first second-half token is not copyable (its predecessor is x_n, whose successor is unknown).
            pred = logits[:, 1:, :].argmax(-1)
            correct += (pred == targets[:, 1:]).sum().item()
            positions += targets[:, 1:].numel()
    return CopyScore(accuracy=correct / positions, loss=loss_sum / tokens, sequences=int(sequences.shape[0]))


def copy_loss(model: Any, sequences: torch.Tensor, length: int, prefix: int = 0) -> torch.Tensor:
    """Differentiable mean second-half cross-entropy (the training loss, spec §3)."""
    logits = _second_half_logits(model, sequences, length, prefix).float()
    targets = sequences[:, prefix + length : prefix + 2 * length].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
