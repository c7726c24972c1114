"""What `pearzoo locate` reports: a `LocateResult` as plain, typed data (`--json` dumps it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipeName(_Out):
    id: str
    version: str


class ConfigurationReport(_Out):
    samples: int
    length: int
    clean_metric: float = Field(description="Mean read-out metric of the clean run (spec §2.2).")


class HeadReport(_Out):
    layer: int
    head: int
    score: float = Field(description="Relative change of the metric under the head's ablation, averaged (spec §2.4).")
    delta: float = Field(description="Absolute change of the metric, averaged over the configurations.")
    exact: bool = Field(description="Scored by its ablation; false: a pre-screen estimate.")


class LocateReport(_Out):
    """Every head's score, best first, and the top K selected."""

    model: str
    recipe: RecipeName
    scope: str
    k: int
    seconds: float
    configurations: list[ConfigurationReport]
    selected: list[str] = Field(description="The top K heads as LAYER.HEAD.")
    candidates: list[str] | None = Field(
        description="null: every head scored exactly; else the pre-screened heads scored exactly (the rest are estimates)."
    )
    heads: list[HeadReport] = Field(description="Every head, in ranking order.")

    @classmethod
    def from_result(cls, result: Any, model: str, recipe: Any) -> LocateReport:
        """From a `LocateResult`, the model id and the `Recipe` it ran with."""
        score, delta = result.score, result.delta
        return cls(
            model=model,
            recipe=RecipeName(id=recipe.id, version=recipe.version),
            scope=result.scope.value,
            k=result.k,
            seconds=round(result.seconds, 3),
            configurations=[
                ConfigurationReport(samples=c.samples, length=c.length, clean_metric=c.clean_metric)
                for c in result.configurations
            ],
            selected=[str(h) for h in result.selected],
            candidates=None if result.exact is None else [str(h) for h in result.exact],
            heads=[
                HeadReport(
                    layer=h.layer,
                    head=h.head,
                    score=float(score[h.layer, h.head]),
                    delta=float(delta[h.layer, h.head]),
                    exact=result.exact is None or h in result.exact,
                )
                for h in result.ranking
            ],
        )
