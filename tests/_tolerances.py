"""Numeric tolerances, in one place, keyed by what is compared."""

FOLD_VS_HOOK_FP32 = 1e-5  # max |logit diff| between folded weights and runtime hooks, float32
LOCATE_RELATIVE = 1e-4  # fast locate vs the plain per-head reference, relative on the ablated metric
