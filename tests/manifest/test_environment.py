"""pearzoo/manifest/environment.py: the build environment a manifest (and an audit's rebuild) records."""

import platform

import torch
import transformers

import pearzoo
from pearzoo.manifest.environment import build_environment
from pearzoo.manifest.schema import BuildInfo
from tiny_models import tiny_model


def test_environment_records_versions_device_and_rounded_seconds():
    model, _ = tiny_model("llama", "gqa")
    env = build_environment(model, dtype="bfloat16", seed=7, seconds={"load": 0.12345, "locate": 2.0004999, "total": 3})
    assert env == BuildInfo(
        pearzoo=pearzoo.__version__,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        device="cpu",
        dtype="bfloat16",
        seed=7,
        seconds={"load": 0.123, "locate": 2.0, "total": 3.0},
    )
