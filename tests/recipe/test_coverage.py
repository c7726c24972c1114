"""docs/coverage.md: the architecture coverage table, generated from recipes/, recipes/unsupported.yaml and the
tests that check them. The test fails when the committed file is stale; regenerate with

    python tests/recipe/test_coverage.py --write
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "coverage.md"
sys.path.insert(0, str(ROOT / "tests"))

GATE = "hooks = fold, tau = 1 identity, ablation, locate = reference (path, total), resolution"


def render() -> str:
    from pearzoo.recipe.catalog import list_recipes, unsupported_reasons
    from recipe.test_build_patch_families import FAMILIES
    from test_architectures import KNOWN_DEFECTS
    from tiny_models import variants

    defects = {(r, mt): reason for (check, r, mt, _), (reason, _) in KNOWN_DEFECTS.items()}
    rows = []
    generic = [r for r in list_recipes() if not r.match.model_ids]
    instances = [r for r in list_recipes() if r.match.model_ids]
    full = 0
    for recipe in generic:
        for model_type in recipe.match.model_types:
            h = recipe.heads
            head_dim = h.head_dim[0] if h.head_dim else "hidden/heads"
            where = f"`{h.layers}.N.{h.output_projection}` ({h.layout.value}, {head_dim})"
            tested = f"gate: {', '.join(variants(model_type))}"
            defect = defects.get((recipe.id, model_type))
            if defect:
                tested += "; locate: known defect (see below)"
            else:
                full += 1
            if model_type in FAMILIES:
                tested += "; build -> patch -> load, no tokenizer files"
            family = recipe.id.split("/")[0]
            rows.append(f"| {model_type} | {family} | `{recipe.id}` {recipe.version} | {where} | {tested} |")
    rows.sort()
    reasons = unsupported_reasons()
    lines = [
        "# Architecture coverage",
        "",
        "Generated from `recipes/` and `recipes/unsupported.yaml` by `python tests/recipe/test_coverage.py --write`;",
        "`tests/recipe/test_coverage.py` fails when this file is stale. Do not edit by hand.",
        "",
        f"**{len(rows)} model_types covered** by {len(generic)} recipes; {full} pass every check of the conformance gate",
        f"(`tests/test_architectures.py`: {GATE}) on a tiny random model of the architecture,",
        f"{len(rows) - full} pass all but the locate check (known defects below). `gate:` names the tiny-model variants.",
        f"{sum('build -> patch' in r for r in rows)} model_types also run",
        "`pearzoo build` -> `pearzoo patch` -> `from_pretrained` on a tiny model saved without tokenizer files",
        "(`tests/recipe/test_build_patch_families.py`).",
        "",
        "| model_type | family | recipe | heads (layout, head_dim) | tested |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        "## Model-specific instances",
        "",
        "Tuned settings for one model, extending a generic recipe (`extends`); chosen for the model ids they name.",
        "",
        "| recipe | extends the geometry of | model ids |",
        "| --- | --- | --- |",
        *sorted(f"| `{r.id}` {r.version} | {', '.join(r.match.model_types)} | {', '.join(r.match.model_ids)} |" for r in instances),
        "",
        "## Known defects",
        "",
        *sorted({f"- {reason}: {', '.join(sorted(mt for (rid, mt), why in defects.items() if why == reason))}" for reason in defects.values()}),
        "",
        "## Not covered, and why",
        "",
        "`pearzoo build` and `pearzoo patch` give this reason in one line (exit 3); `pearzoo recipes scaffold` refuses them.",
        "",
        "| model_type | why |",
        "| --- | --- |",
        *[f"| {mt} | {reasons[mt]} |" for mt in sorted(reasons)],
        "",
    ]
    return "\n".join(lines)


def test_coverage_doc_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), "docs/coverage.md is stale: python tests/recipe/test_coverage.py --write"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(render(), encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        print(render(), end="")
