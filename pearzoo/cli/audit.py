"""`pearzoo audit`: rebuild a manifest from its recipe and seed, and report drift."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pearzoo.cli._options import device_option, model_option, revision_option
from pearzoo.cli._output import Output, json_option, quiet_option

if TYPE_CHECKING:
    from pearzoo.audit import AuditReport, Check
    from pearzoo.manifest.schema import BuildInfo

_LABELS = {
    "head_overlap": "head overlap",
    "rank_correlation": "rank correlation",
    "coefficient_diff": "max |tau - tau'|",
}


def _num(value: float | None, width: int = 9) -> str:
    return f"{value:>{width}.6g}" if value is not None else f"{'-':>{width}}"


def _env(b: BuildInfo) -> str:
    times = ", ".join(f"{stage} {b.seconds[stage]:.1f} s" for stage in ("load", "locate", "train", "total") if stage in b.seconds)
    return f"pearzoo {b.pearzoo}, torch {b.torch}, transformers {b.transformers}, python {b.python}, {b.device}, {b.dtype}; {times}"


def _failure(name: str, check: Check) -> str:
    if check.value is None:
        return f"{name} undefined ({check.note})"
    return f"{name} {check.value:.6g} {'<' if check.bound == 'min' else '>'} {check.tolerance:g}"


def _human(r: AuditReport) -> str:
    lines = [
        f"audit {r.manifest}: {r.model_id}, recipe {r.recipe_id} {r.recipe_version}, seed {r.seed}, K={r.k}",
        f"{'check':<18}  {'value':>9}  {'tolerance':>11}  result",
    ]
    for name, check in r.checks:
        op = ">=" if check.bound == "min" else "<="
        verdict = "pass" if check.passed else "DRIFT"
        note = f"  ({check.note})" if check.note else ""
        lines.append(f"{_LABELS[name]:<18}  {_num(check.value)}  {op} {check.tolerance:>8.6g}  {verdict}{note}")
    lines.append(f"{'head':>6}  {'set':>9}  {'score':>9}  {'rebuilt':>9}  {'tau':>9}  {'rebuilt':>9}")
    for h in r.heads:
        where = "both" if h.published and h.rebuilt else "manifest" if h.published else "rebuild"
        lines.append(
            f"{h.head:>6}  {where:>9}  {_num(h.score)}  {_num(h.rebuild_score)}  {_num(h.coefficient)}  {_num(h.rebuild_coefficient)}"
        )
    lines.append(f"manifest: {_env(r.published)}")
    lines.append(f"rebuild:  {_env(r.rebuild)}")
    lines.append("passed" if r.passed else "drift: " + ", ".join(r.failures()))
    return "\n".join(lines)


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@model_option(required=False, help="The base to rebuild on. Default: the manifest's base (built-in name, or Hub id at the recorded revision); required for local bases.")
@revision_option(help="Hub revision of --model.")
@device_option(help="Device for the rebuild (cpu, cuda). The dtype is the manifest's.")
@json_option
@quiet_option
def audit(manifest: Path, model: str | None, revision: str | None, device: str | None, json_mode: bool, quiet: bool) -> None:
    """Rebuild a manifest from its recorded recipe and seed, and report drift.

    Verifies the manifest and that the model is its base (tensor digests), re-runs locate and train,
    and compares head-set overlap, the rank correlation of scores and the largest coefficient
    difference against the tolerances in the recipe's `audit` section. The report goes to stdout
    (a table, or JSON with --json) even when the audit fails.

    \b
    Exit codes:
      0  every check passed
      8  drift: at least one check failed (the report names it)
      5  the manifest was modified, or the model is not its base
      3  invalid manifest, or --model needed (base built from local files)
      4  manifest or model not found

    \b
    Examples:
      pearzoo audit smollm2.pear.json
      pearzoo audit my.pear.json --model ./my-llama --json
    """
    from pearzoo.audit import audit_manifest
    from pearzoo.errors import DriftError

    from pearzoo.patch.resolve import manifest_file

    output = Output(json_mode=json_mode, quiet=quiet)
    manifest = manifest_file(manifest)  # a file, or a name `pearzoo list` prints (the registry's newest)
    report = audit_manifest(manifest, model, revision=revision, device=device, progress=output.progress)
    output.result(report, _human(report))
    if not report.passed:
        failed = ", ".join(_failure(name, check) for name, check in report.checks if not check.passed)
        raise DriftError(f"{manifest}: the rebuild drifted from the manifest: {failed}", failed=report.failures())


def register(group: click.Group) -> None:
    group.add_command(audit)
