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

# The same float32 computation in another order or grouping (the prefix in chunks, the shared-prefix path vs the
# tiled cache): only re-association differs.
REORDERED_FP32 = {"rtol": 1e-5, "atol": 1e-6}
# Locate with every head a pre-screen candidate against plain locate: the same ablations, other batches.
RESCORED_FP32 = {"rtol": 1e-6, "atol": 1e-9}
LOCATE_ABS_FLOOR = 1e-9  # absolute floor under LOCATE_RELATIVE, for scores near zero
# The plain locate reference: logits before the ablated position p cannot change (causal attention).
PREFIX_LOGITS_FP32 = 1e-5
# Something a test scales or ablates must move the logits by more than this (or the test could pass on a no-op).
MIN_LOGIT_EFFECT = 1e-2
# Attribution pre-screen vs a central finite difference of the plain ablation, float64 model (tests/test_prescreen.py):
PRESCREEN_SLOPE_RELATIVE = 1e-3
PRESCREEN_SLOPE_FLOOR = 1e-4  # times the largest |slope|: float32 norms round absolutely, not relatively
SCOPES_DIFFER = 1e-2  # times the largest |slope|: path and total scope estimates must differ by more
# tests/llama2c.py's conversion vs a numpy reimplementation of llama2.c's forward pass, float32.
LLAMA2C_LOGITS_FP32 = 1e-4
# A copy loss recomputed from a manifest's coefficients on the same sequences, same process: float32 re-summation.
COPY_LOSS_RECOMPUTED = 1e-6  # relative
# Values that are exact in real arithmetic and differ only by float64 rounding (Spearman's rho, |0.3 - 0.2|).
FLOAT64_EXACT = 1e-12
# The copy loss from logits gathered at the scored positions against the same positions sliced out of the full logits
# (issue #15): the same dot products in a different matrix-product call; relative, on the loss and on d loss / d tau.
GATHERED_VS_FULL_LOGITS = 1e-6
