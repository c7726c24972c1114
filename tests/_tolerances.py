"""Numeric tolerances, in one place, keyed by what is compared."""

FOLD_VS_HOOK_FP32 = 1e-5  # max |logit diff| between folded weights and runtime hooks, float32
LOCATE_RELATIVE = 1e-4  # fast locate vs the plain per-head reference, relative on the ablated metric
# A 30-layer real model with logits up to ~35: float32 re-association of the scaled product (weight vs
# activation side) accumulates to a few 1e-5; 1e-4 absolute is ~3e-6 relative to the logits.
FOLD_VS_HOOK_FP32_DEEP = 1e-4
