"""Numeric tolerances, in one place, keyed by what is compared."""

FOLD_VS_HOOK_FP32 = 1e-5  # max |logit diff| between folded weights and runtime hooks, float32
LOCATE_RELATIVE = 1e-4  # fast locate vs the plain per-head reference, relative on the ablated metric
# A 30-layer real model with logits up to ~35: float32 re-association of the scaled product (weight vs
# activation side) accumulates to a few 1e-5; 1e-4 absolute is ~3e-6 relative to the logits.
FOLD_VS_HOOK_FP32_DEEP = 1e-4
# A folded model's copy metrics against those the build measured with runtime hooks, on the same sequences. Each
# logit moves by at most FOLD_VS_HOOK_FP32_DEEP, so a token's cross-entropy (target logit minus log-sum-exp) by at
# most twice that, and an argmax can change only where the top two logits are within twice that of each other.
COPY_LOSS_FOLD_VS_HOOK = 2 * FOLD_VS_HOOK_FP32_DEEP  # absolute, mean copy loss in nats
COPY_ARGMAX_MARGIN = 2 * FOLD_VS_HOOK_FP32_DEEP  # top-1 minus top-2 logit at or below which a position may flip
# The copy loss from logits gathered at the scored positions against the same positions sliced out of the full logits
# (issue #15): the same dot products in a different matrix-product call; relative, on the loss and on d loss / d tau.
GATHERED_VS_FULL_LOGITS = 1e-6
