"""`pearzoo audit`: rebuild a manifest from its own recipe and seed, and report how far the rebuild drifts.

The manifest carries the exact recipe its build used (`recipe.settings`, overrides applied), the seed
and the build environment. An audit loads the same base (checked by tensor digests first: another base
is an integrity failure, not drift), re-runs locate and train, and compares three things against the
tolerances in the recipe's `audit` section:

- head overlap: |A n B| / K, A the published heads and B the rebuild's top K;
- rank correlation: Spearman's rho between the published scores of the heads in A and the rebuild's
  scores of the same heads. A manifest records scores for its K heads only, so A is the largest set
  both sides have scores for; heads that left the top K show up in the overlap instead. Ties get
  average ranks;
- coefficient difference: the largest |tau - tau'| over the heads in A n B.

Builds are deterministic on one machine (seeded streams, fixed head order), so an audit there gives
overlap 1, rho 1 and difference 0 exactly; the tolerances are for other devices and library versions,
which the report records next to the manifest's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pearzoo.errors import InvalidInputError, NotFoundError
from pearzoo.manifest.schema import BuildInfo, Manifest
from pearzoo.recipe.schema import AuditTolerances

if TYPE_CHECKING:
    from pearzoo.build import ProgressFactory


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Out):
    """One comparison against its tolerance."""

    value: float | None = Field(description="Measured value; null when it is undefined (see `note`).")
    tolerance: float = Field(description="The recipe's bound (`audit.*`).")
    bound: Literal["min", "max"] = Field(description="`min`: value must be >= tolerance; `max`: <= tolerance.")
    passed: bool
    note: str | None = Field(default=None, description="Why the value is undefined, and how that was judged.")


class Checks(_Out):
    head_overlap: Check = Field(description="|A n B| / K of the published (A) and rebuilt (B) head sets.")
    rank_correlation: Check = Field(description="Spearman rho of published vs rebuilt scores of the published heads.")
    coefficient_diff: Check = Field(description="Largest |tau - tau'| over the heads both sets share.")


class HeadComparison(_Out):
    head: str = Field(description="`LAYER.HEAD`.")
    published: bool = Field(description="In the manifest's head set.")
    rebuilt: bool = Field(description="In the rebuild's top K.")
    score: float | None = Field(description="Published score (null for heads only the rebuild selected).")
    rebuild_score: float = Field(description="The rebuild's score (it scores every head).")
    coefficient: float | None = Field(description="Published tau.")
    rebuild_coefficient: float | None = Field(description="The rebuild's tau.")


class AuditReport(_Out):
    """What `pearzoo audit --json` prints."""

    manifest: str = Field(description="Path of the audited manifest.")
    digest: str = Field(description="The audited manifest's digest.")
    model: str = Field(description="The model reference the rebuild loaded.")
    model_id: str
    revision: str | None
    recipe_id: str
    recipe_version: str
    recipe_digest: str = Field(description="Digest the manifest records for its recipe.")
    rebuild_recipe_digest: str = Field(
        description="Digest of the recipe as this pearzoo parses the recorded settings (differs when a newer "
        "pearzoo added settings with defaults)."
    )
    seed: int
    k: int
    heads: list[HeadComparison] = Field(description="Published heads in manifest order, then rebuild-only heads.")
    checks: Checks
    passed: bool = Field(description="All checks passed.")
    published: BuildInfo = Field(description="The manifest's build environment and durations.")
    rebuild: BuildInfo = Field(description="This rebuild's environment and durations.")

    def failures(self) -> list[str]:
        return [name for name, check in self.checks if not check.passed]


# --- comparison (pure) ---------------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span (as scipy's `rankdata`)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, str | None]:
    """Spearman's rho (Pearson correlation of average ranks) and a note when it is not the plain formula.

    Fewer than 2 pairs: undefined, `(None, note)`. Both sides all tied: the orderings agree, 1.0.
    One side all tied and the other not: no ordering to agree with, 0.0.
    """
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return None, "undefined for fewer than 2 heads"
    ra, rb = average_ranks(a), average_ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 and vb == 0:
        return 1.0, "all scores tied on both sides"
    if va == 0 or vb == 0:
        return 0.0, "all scores tied on one side only"
    return cov / (va * vb) ** 0.5, None


def compare(
    published: list[tuple[tuple[int, int], float, float]],
    rebuilt: list[tuple[tuple[int, int], float]],
    rebuild_scores: dict[tuple[int, int], float],
    tolerances: AuditTolerances,
) -> tuple[list[HeadComparison], Checks]:
    """Compare a published head set with a rebuild.

    Args:
        published: ((layer, head), score, tau) per manifest head, in manifest order.
        rebuilt: ((layer, head), tau) per rebuilt head, in rank order.
        rebuild_scores: the rebuild's score of every head.
        tolerances (`AuditTolerances`): the recipe's bounds.
    """
    pub = {h: (score, tau) for h, score, tau in published}
    reb = dict(rebuilt)
    shared = [h for h, _, _ in published if h in reb]
    overlap = len(shared) / len(published)
    rho, rho_note = spearman([pub[h][0] for h, _, _ in published], [rebuild_scores[h] for h, _, _ in published])
    diffs = [abs(pub[h][1] - reb[h]) for h in shared]
    diff = max(diffs) if diffs else None
    checks = Checks(
        head_overlap=Check(
            value=overlap, tolerance=tolerances.min_head_overlap, bound="min", passed=overlap >= tolerances.min_head_overlap
        ),
        rank_correlation=Check(
            value=rho,
            tolerance=tolerances.min_rank_correlation,
            bound="min",
            # Undefined (K = 1): nothing to order, so nothing can have drifted; the overlap still checks the head.
            passed=rho is None or rho >= tolerances.min_rank_correlation,
            note=rho_note,
        ),
        coefficient_diff=Check(
            value=diff,
            tolerance=tolerances.max_coefficient_diff,
            bound="max",
            passed=diff is not None and diff <= tolerances.max_coefficient_diff,
            note=None if diffs else "no head in common: nothing to compare",
        ),
    )
    rows = [
        HeadComparison(
            head=f"{h[0]}.{h[1]}",
            published=True,
            rebuilt=h in reb,
            score=score,
            rebuild_score=rebuild_scores[h],
            coefficient=tau,
            rebuild_coefficient=reb.get(h),
        )
        for h, score, tau in published
    ]
    rows += [
        HeadComparison(
            head=f"{h[0]}.{h[1]}",
            published=False,
            rebuilt=True,
            score=None,
            rebuild_score=rebuild_scores[h],
            coefficient=None,
            rebuild_coefficient=tau,
        )
        for h, tau in rebuilt
        if h not in pub
    ]
    return rows, checks


# --- rebuild -------------------------------------------------------------------------------------------


def default_model(manifest: Manifest, source: str) -> tuple[str, str | None]:
    """(model reference, revision) that loads the manifest's base: a built-in name or a Hub id at its commit.

    Raises:
        InvalidInputError: the base was read from local files, which the manifest cannot locate.
    """
    from pearzoo.source import BUILTIN_MODELS

    base = manifest.base
    for name, spec in BUILTIN_MODELS.items():
        if base.model_id == spec["model_id"] and (base.origin or "").startswith(f"pypi:{spec['distribution']}=="):
            return name, None
    if base.revision is not None:
        return base.model_id, base.revision
    from pearzoo.source import zoo_model

    if zoo_model(base.model_id) is not None:  # a reference-zoo model: its checkout directory
        return base.model_id, None
    raise InvalidInputError(
        f"{source}: base '{base.model_id}' was built from local files (no Hub revision recorded)",
        hint="pass --model with the path of that model",
        field="model",
    )


def _bound_digests(ctx: Any, names: Sequence[str]) -> dict[str, str]:
    """Digests of the tensors the manifest binds; a tensor the model lacks is left out (verify names it)."""
    from pearzoo.binding import base_digests

    out: dict[str, str] = {}
    for name in sorted(names):
        try:
            out.update(base_digests(ctx.source, ctx.model, [name]))
        except NotFoundError as exc:
            if getattr(exc, "tensor", None) != name:
                raise
    return out


def audit_manifest(
    manifest_path: str | Path,
    model: str | None = None,
    *,
    revision: str | None = None,
    device: str | None = None,
    progress: ProgressFactory | None = None,
) -> AuditReport:
    """Rebuild a manifest from its recorded recipe and seed on the same base, and compare.

    Args:
        manifest_path (`str` or `Path`): the manifest to audit (schema and digest are verified).
        model (`str`, *optional*): the base to load. Default: the manifest's base (a built-in name, or its Hub
            id at the recorded revision); required for bases built from local files.
        revision (`str`, *optional*): Hub revision of `model` (ignored when `model` is not given).
        device (`str`, *optional*): where to run the rebuild (cpu, cuda). The dtype is the manifest's.
        progress (*optional*): a factory of progress bars, as for `build_manifest`.

    Returns:
        `AuditReport`: per-check value, tolerance and verdict, and `passed`. Drift is a result, not an error.

    Raises:
        NotFoundError: the manifest or the model does not exist.
        InvalidInputError: the manifest fails its schema or its recorded recipe no longer parses; no model given
            for a base built from local files.
        IntegrityError: the manifest was modified (digest), or the model is not the manifest's base (names the
            first tensor that differs or is missing).

    Example:
        >>> report = audit_manifest("smollm2.pear.json")
        >>> report.passed, report.checks.coefficient_diff.value
    """
    from pearzoo.binding import verify_base
    from pearzoo.build import BuildOptions, prepare, run_locate, run_train
    from pearzoo.manifest.environment import build_environment
    from pearzoo.manifest.io import read_manifest
    from pearzoo.manifest.recorded import recorded_recipe
    from pearzoo.recipe.load import recipe_digest

    start = time.perf_counter()
    source = str(manifest_path)
    manifest = read_manifest(manifest_path)
    recipe = recorded_recipe(manifest, source)
    if recipe.seed != manifest.build.seed:
        raise InvalidInputError(
            f"{source}: build.seed {manifest.build.seed} differs from recipe.settings.seed {recipe.seed}",
            path=source,
            field="build.seed",
        )
    if model is None:
        model, revision = default_model(manifest, source)
    options = BuildOptions(model=model, revision=revision, device=device, dtype=manifest.build.dtype)
    ctx = prepare(options, (recipe, Path(manifest_path)))
    # A different base is not drift: refuse before spending the rebuild.
    verify_base(manifest.base.tensors, _bound_digests(ctx, list(manifest.base.tensors)), ctx.source.model_id)

    located = run_locate(ctx, progress)
    trained = run_train(ctx, located.selected, progress)
    ctx.seconds["total"] = time.perf_counter() - start

    score = located.score
    rows, checks = compare(
        [((h.layer, h.head), h.score, h.coefficient) for h in manifest.heads],
        [((h.layer, h.head), float(tau)) for h, tau in zip(trained.heads, trained.coefficients)],
        {(h.layer, h.head): float(score[h.layer, h.head]) for h in ctx.geometry.all_heads()},
        recipe.audit,
    )
    rebuild = build_environment(ctx.model, dtype=options.dtype, seed=recipe.seed, seconds=ctx.seconds)
    return AuditReport(
        manifest=source,
        digest=manifest.digest,
        model=model,
        model_id=ctx.source.model_id,
        revision=ctx.source.revision,
        recipe_id=recipe.id,
        recipe_version=recipe.version,
        recipe_digest=manifest.recipe.digest,
        rebuild_recipe_digest=recipe_digest(recipe),
        seed=recipe.seed,
        k=len(manifest.heads),
        heads=rows,
        checks=checks,
        passed=all(check.passed for _, check in checks),
        published=manifest.build,
        rebuild=rebuild,
    )
