"""A finished study read back: one value per trial, mean +- std per cell, the table and a figure.

Each trial's own ``results.json`` (its pretraining run's final evaluation) gives the value: the
linear probe's final top-1 or the kNN top-1 of the pretrained encoder, and with ``breakdown``
the many / medium / few-shot accuracies of the final probe. ``study.md`` and ``study.csv`` hold
one row per method and one column per dataset or setting (mean +- sample std over the seeds that
finished, with their count), plus the paper's number where the study file gives one;
``study.png`` draws the same as bars with error bars.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.run_files import RESULTS_JSON
from pipelines.core.storage import write_atomic
from pipelines.studies.spec import METRICS, SHOTS, Cell, cells, metric_of


@dataclass
class Stat:
    """The values of one cell (or one shot group of it) over its seeds."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        """The mean, ``None`` without values."""
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (``n - 1``), ``None`` below two values."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        """``71.20 ± 0.35 (n=3)``, ``71.20 (n=1)`` or ``-``."""
        if self.mean is None:
            return "-"
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} (n={len(self.values)})"


def trial_values(results: dict[str, Any], metric: str) -> dict[str, float | None]:
    """The pretrained encoder's ``metric`` and its many / medium / few-shot top-1 from a ``results.json``."""
    judged = results.get("pretrained") or {}
    value = (
        (judged.get("linear") or {}).get("final_top1") if metric == "linear_top1" else judged.get("knn_top1")
    )
    shots = ((judged.get("breakdown") or {}).get("shots")) or {}
    return {"value": value, **{s: (shots.get(s) or {}).get("top1") for s in SHOTS}}


def collect(study: dict[str, Any], rows: list[Any], trials_dir: Path) -> dict[str, dict[str, Stat]]:
    """``{cell arm: {"value" | shot group: Stat}}`` from the trials that finished (wrote ``results.json``).

    A trial finishes at its own last epoch, so cells may differ in ``trainer.epochs``.
    """
    metric = metric_of(study)
    stats: dict[str, dict[str, Stat]] = {c.arm: {k: Stat() for k in ("value", *SHOTS)} for c in cells(study)}
    for row in rows:
        path = trials_dir / row.trial_id / RESULTS_JSON
        if row.status == "error" or row.arm not in stats or not path.exists():  # finished: has results
            continue
        for key, value in trial_values(json.loads(path.read_text()), metric).items():
            if value is not None:
                stats[row.arm][key].values.append(float(value))
    return stats


def _columns(study: dict[str, Any]) -> list[tuple[str, str]]:
    """``(column, part)`` pairs of the table: the value, then the shot groups with ``breakdown``."""
    parts = ["value", *(SHOTS if study.get("breakdown") else ())]
    return [(str(c), p) for c in study["columns"] for p in parts]


def _header(column: str, part: str) -> str:
    return column if part == "value" else f"{column} {part}"


def table_rows(study: dict[str, Any], stats: dict[str, dict[str, Stat]]) -> list[list[str]]:
    """The table body: a row per method, a cell per (column, part), then the paper's numbers."""
    by_cell: dict[tuple[str, str], Cell] = {(c.row, c.column): c for c in cells(study)}
    paper = study.get("paper") or {}
    out = []
    for row in study["rows"]:
        line = [str(row)]
        for column, part in _columns(study):
            line.append(stats[by_cell[(str(row), column)].arm][part].text())
        for column in study["columns"]:
            number = (paper.get(row) or {}).get(column)
            line.append("-" if number is None else f"{float(number):.2f}")
        out.append(line)
    return out


def headers(study: dict[str, Any]) -> list[str]:
    """The table's column names."""
    return [
        "method",
        *(_header(c, p) for c, p in _columns(study)),
        *(f"paper {c}" for c in study["columns"]),
    ]


def write_study(study: dict[str, Any], stats: dict[str, dict[str, Stat]], folder: Path) -> dict[str, Path]:
    """Write ``study.md``, ``study.csv`` and ``study.png`` into ``folder``; return their paths."""
    head, body = headers(study), table_rows(study, stats)
    metric = METRICS[metric_of(study)]
    md = [
        f"# {study.get('title') or study['name']}",
        "",
        f"{metric} of the pretrained encoder, mean ± sample std over seeds {list(study['seeds'])} "
        "(n = seeds that finished); 'paper': the paper's number where the study file gives one.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(line) + " |" for line in body),
    ]
    files = {"md": folder / "study.md", "csv": folder / "study.csv", "png": folder / "study.png"}
    write_atomic(files["md"], "\n".join(md) + "\n")
    with files["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "column", "part", "mean", "std", "n", "values", "paper"])
        for cell in cells(study):
            for column, part in _columns(study):
                if column != cell.column:
                    continue
                s = stats[cell.arm][part]
                paper = (
                    ((study.get("paper") or {}).get(cell.row) or {}).get(cell.column)
                    if part == "value"
                    else None
                )
                writer.writerow([cell.row, column, part, s.mean, s.std, len(s.values), s.values, paper])
    _figure(study, stats, files["png"])
    return files


def _figure(study: dict[str, Any], stats: dict[str, dict[str, Stat]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [str(c) for c in study["columns"]]
    rows = [str(r) for r in study["rows"]]
    by_cell = {(c.row, c.column): c for c in cells(study)}
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(columns) * max(1, len(rows)) ** 0.5), 4.0))
    for i, row in enumerate(rows):
        s = [stats[by_cell[(row, c)].arm]["value"] for c in columns]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [x.mean or 0.0 for x in s], width, yerr=[x.std or 0.0 for x in s], capsize=4, label=row)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel(METRICS[metric_of(study)] + " (%)")
    ax.set_title(study.get("title") or study["name"], fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
