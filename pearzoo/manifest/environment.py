"""The build environment a manifest records: library versions, device, dtype, seed and time per stage.

`pearzoo build` stores it in the manifest; `pearzoo audit` captures the rebuild's the same way and reports both.
"""

from __future__ import annotations

import platform
from typing import Any

from pearzoo.manifest.schema import BuildInfo


def build_environment(model: Any, *, dtype: str, seed: int, seconds: dict[str, float]) -> BuildInfo:
    """The environment of a build (or rebuild) that ran on `model`.

    Args:
        model: the loaded model; its input embeddings' device is recorded (the first device under a device map).
        dtype (`str`): the dtype the build asked for (`float32`, `bfloat16`, `float16`).
        seed (`int`): the recipe seed the build used.
        seconds (`dict[str, float]`): wall time per stage, rounded here to milliseconds.

    Returns:
        `BuildInfo`.
    """
    import torch
    import transformers

    from pearzoo import __version__

    return BuildInfo(
        pearzoo=__version__,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        device=str(model.get_input_embeddings().weight.device),
        dtype=dtype,
        seed=seed,
        seconds={stage: round(value, 3) for stage, value in seconds.items()},
    )
