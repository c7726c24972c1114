"""Patching: fold coefficients into the output-projection weights of a model copy."""
