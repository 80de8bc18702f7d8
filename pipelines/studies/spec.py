"""A study config (``configs/study/<name>.yaml``) and the search it runs.

A study names ``rows`` (methods) and ``columns`` (datasets or settings); each cell is a preset,
written once per row as a template over the column (``"{column}_cacr_k4"``) or spelled out per
column, optionally with ``overrides`` of its own. Every cell runs once per seed in ``seeds``. The
study becomes a search (:mod:`pipelines.search.space`) with one arm per cell and the seeds as a
shared grid, run to the end (no ASHA), so resuming, trial folders and the trial table are the
search machinery's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.core.errors import ConfigError

METRICS = {"linear_top1": "linear probe top-1", "knn_top1": "kNN top-1"}
DEFAULT_METRIC = "linear_top1"
SHOTS = ("many", "medium", "few")


@dataclass(frozen=True)
class Cell:
    """One row x column of a study: the preset it runs and the search arm that runs it."""

    row: str
    column: str
    experiment: str
    overrides: list[str] = field(default_factory=list)

    @property
    def arm(self) -> str:
        """The search arm's name: letters, digits and ``_`` only (it names Tune parameters)."""
        return re.sub(r"[^A-Za-z0-9_]+", "_", f"{self.row}__{self.column}").strip("_")


def metric_of(study: dict[str, Any]) -> str:
    """The study's ``metric`` (default: the final linear probe's top-1)."""
    return str(study.get("metric") or DEFAULT_METRIC)


def _cell(row: str, column: str, value: Any) -> Cell:
    if isinstance(value, str):
        value = {"experiment": value}
    if not isinstance(value, dict) or not value.get("experiment"):
        raise ConfigError(
            f"study.rows.{row}: a preset name (or a template such as '{{column}}_cl'), or "
            f"{{experiment: ..., overrides: [...]}}, got {value!r}"
        )
    experiment = str(value["experiment"]).format(column=column)
    overrides = [str(o).format(column=column) for o in value.get("overrides") or []]
    return Cell(row, column, experiment, overrides)


def cells(study: dict[str, Any]) -> list[Cell]:
    """Every cell of ``study``, row by row.

    Raises:
        ConfigError: naming the key, for a study without rows, columns or seeds, or a bad cell.
    """
    name = study.get("name")
    if not name:
        raise ConfigError("study is missing: pick one with study=<name> (configs/study/)")
    rows, columns = study.get("rows") or {}, list(study.get("columns") or [])
    if not rows or not columns:
        raise ConfigError(f"study {name}: study.rows and study.columns must both be non-empty")
    seeds = study.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"study.seeds={seeds!r}: a non-empty list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(
            f"study.seeds={seeds!r}: seed(s) {twice} listed twice would run the same trial again and "
            "count it as another sample in mean ± std; list each seed once"
        )
    if metric_of(study) not in METRICS:
        raise ConfigError(f"study.metric={study.get('metric')!r}: choose one of {', '.join(METRICS)}")
    out = []
    for row, spec in rows.items():
        for column in columns:
            value = spec.get(column) if isinstance(spec, dict) and "experiment" not in spec else spec
            if value is None:
                raise ConfigError(f"study.rows.{row}: no preset for column {column!r}")
            out.append(_cell(str(row), str(column), value))
    if len({c.arm for c in out}) != len(out):
        raise ConfigError(f"study {name}: two cells reduce to the same name; rename a row or column")
    return out


def as_search(study: dict[str, Any]) -> dict[str, Any]:
    """The search that runs ``study``: an arm per cell, the seeds as a shared grid, no ASHA."""
    arms = {c.arm: {"experiment": c.experiment, "overrides": c.overrides} for c in cells(study)}
    return {
        "name": str(study["name"]),
        "overrides": list(study.get("overrides") or []),
        "arms": arms,
        "shared": {"trainer.seed": {"grid": list(study["seeds"])}},
        "num_samples": 1,
        "asha": None,
    }
