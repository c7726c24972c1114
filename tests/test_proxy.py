"""pearzoo/proxy.py: the random-token copying task (spec §1): streams, token space, sequences, copy score and loss."""

import pytest
import torch
import torch.nn.functional as F

from _tolerances import REORDERED_FP32
from pearzoo.errors import InvalidInputError
from pearzoo.proxy import copy_loss, copy_score, generator, sample_sequences, token_space
from pearzoo.recipe.schema import ProxyTask
from tiny_models import tiny_model


def test_named_streams_are_pinned_and_independent():
    # Pinned: a build's draws are the same on every machine and in every later pearzoo.
    draw = lambda seed, stream: torch.randint(0, 1000, (6,), generator=generator(seed, stream)).tolist()  # noqa: E731
    assert draw(0, "locate/0") == [491, 955, 585, 93, 867, 620]
    assert draw(0, "train") == [73, 514, 76, 600, 195, 342]
    assert draw(1, "locate/0") == [726, 550, 158, 736, 203, 799]


def test_token_space_drops_special_ids_and_keeps_the_range():
    space = token_space(ProxyTask(token_range=(2, 10), bos=True), 8, {0, 3, 5}, bos_id=1)
    assert space.allowed.tolist() == [2, 4, 6, 7] and (space.bos_id, space.prefix) == (1, 1)
    space = token_space(ProxyTask(token_range=(0, None), bos=False), 6, set(), bos_id=1)
    assert space.allowed.tolist() == [0, 1, 2, 3, 4, 5] and (space.bos_id, space.prefix) == (None, 0)


@pytest.mark.parametrize(
    "proxy, special, bos, message",
    [
        (ProxyTask(token_range=(4, 6), bos=False), {4}, None, "proxy.token_range [4, 6) leaves 1 usable ids"),
        (ProxyTask(token_range=(0, None), bos=True), set(), None, "proxy.bos is true but the model config has no bos_token_id"),
    ],
)
def test_token_space_refusals(proxy, special, bos, message):
    with pytest.raises(InvalidInputError) as err:
        token_space(proxy, 100, special, bos)
    assert str(err.value) == message


def test_sequences_repeat_their_first_half_after_an_optional_bos():
    space = token_space(ProxyTask(token_range=(10, 20), bos=True), 100, {12}, bos_id=1)
    seqs = sample_sequences(space, 5, 7, generator(0, "x"))
    assert seqs.shape == (5, 1 + 14) and seqs.dtype == torch.int64
    assert (seqs[:, 0] == 1).all() and torch.equal(seqs[:, 1:8], seqs[:, 8:])
    assert set(seqs[:, 1:].flatten().tolist()) <= set(space.allowed.tolist())
    assert torch.equal(seqs, sample_sequences(space, 5, 7, generator(0, "x")))


@pytest.fixture(scope="module")
def llama():
    model, recipe = tiny_model("llama", "gqa")
    space = token_space(recipe.proxy, model.config.vocab_size, {0, 1, 2}, model.config.bos_token_id)
    return model, space


def test_copy_score_is_accuracy_and_loss_over_the_second_half(llama):
    """Against a plain full-logits computation: accuracy on positions n..2n-2 of the copy, loss on all n."""
    model, space = llama
    n, prefix = 6, space.prefix
    seqs = sample_sequences(space, 10, n, generator(0, "score"))
    with torch.no_grad():
        logits = model(input_ids=seqs).logits.float()
    predicting = logits[:, prefix + n - 1 : prefix + 2 * n - 1]  # logits that predict the second half
    targets = seqs[:, prefix + n : prefix + 2 * n]
    accuracy = (predicting[:, 1:].argmax(-1) == targets[:, 1:]).sum().item() / (10 * (n - 1))
    loss = F.cross_entropy(predicting.reshape(-1, predicting.shape[-1]), targets.reshape(-1)).item()
    for batch_size in (32, 3):
        score = copy_score(model, seqs, n, prefix, batch_size=batch_size)
        assert score.sequences == 10
        assert score.accuracy == accuracy
        assert score.loss == pytest.approx(loss, rel=REORDERED_FP32["rtol"])
    assert copy_loss(model, seqs, n, prefix).item() == pytest.approx(loss, rel=REORDERED_FP32["rtol"])
