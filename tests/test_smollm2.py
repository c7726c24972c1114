"""Acceptance on a real pretrained model: SmolLM2-135M-Instruct with the committed default recipe.

Slow (minutes on 2 CPU cores): one build with `rope/smollm2-135m`, then `pearzoo eval` on fresh
held-out sequences (500 per n), as a user would run them.
"""

import json

import pytest

from pearzoo.build import BuildOptions, build_manifest
from pearzoo.manifest.io import write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    manifest = build_manifest(BuildOptions(model="smollm2-135m-instruct"))
    path = write_manifest(manifest, tmp_path_factory.mktemp("smol") / "smollm2.pear.json")
    return manifest, path


def test_default_recipe_is_the_smollm2_instance(built):
    manifest, _ = built
    assert manifest.recipe.id == "rope/smollm2-135m"
    assert manifest.base.geometry.num_layers == 30 and manifest.base.geometry.num_heads == 9
    assert len(manifest.heads) == 16
    assert manifest.metrics.perplexity_after <= manifest.metrics.perplexity_before * 1.01


def test_eval_acceptance(built, capsys):
    from pearzoo.cli import main

    _, path = built
    with pytest.raises(SystemExit) as info:
        # --no-kv: retrieval has no acceptance threshold yet and would add about 50 minutes on 2 CPU cores.
        main(["eval", "--model", "smollm2-135m-instruct", "--manifest", str(path), "--no-kv", "--json"])
    assert info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    print(json.dumps(report, indent=2))
    for n in ("10", "25", "50"):
        acc = report["copy_accuracy"][n]
        assert acc["patched"] - acc["base"] >= 0.03, (n, acc)
        assert acc["random_heads"] <= acc["base"], (n, acc)
    ppl = report["perplexity"]
    assert abs(ppl["patched"] / ppl["base"] - 1) <= 0.01, ppl
