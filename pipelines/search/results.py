"""A finished (or stopped) search read back: the trial table, the best config file and a plot."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.search.space import arms, trial_arm, trial_values

METRIC = "knn/top1"
GROUPS = ("dataset", "objective", "framework", "model", "augment", "trainer", "eval", "experiment")


@dataclass
class TrialRow:
    """One trial of the table."""

    trial_id: str
    arm: str
    values: dict[str, Any]
    final: float | None
    best: float | None
    epochs: int
    status: str
    error: str = ""
    overrides: list[str] = field(default_factory=list)


def _id_from_path(path: str) -> str:
    """``4d430_00003`` from Tune's trial folder name ``run_trial_4d430_00003_3_<params>_<date>``."""
    parts = Path(path).name.split("_")
    return "_".join(parts[2:4]) if len(parts) > 3 and parts[0] == "run" else Path(path).name


def _by_trial(frame: Any) -> dict[str, dict[str, Any]]:
    """A Tune results dataframe as ``{trial_id: row}`` (trials that reported nothing have no row)."""
    if frame is None or frame.empty or "trial_id" not in frame:
        return {}
    return {str(row["trial_id"]): row for row in frame.to_dict("records")}


def _score(row: dict[str, Any] | None) -> float | None:
    value = (row or {}).get(METRIC)
    return None if value is None or value != value else float(value)


UNFINISHED = "unfinished (the same command resumes it)"


def _tune_statuses(result_grid: Any) -> list[str | None]:
    """Tune's status of each trial, in the grid's order (``TERMINATED``, ``RUNNING``, ``PAUSED``...).

    ``ResultGrid`` builds its results from its analysis' trials in order, but does not expose the
    status; without it (another Ray) every status reads ``None``.
    """
    trials = getattr(getattr(result_grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(result_grid):
        return [None] * len(result_grid)
    return [getattr(t, "status", None) for t in trials]


def trial_rows(result_grid: Any, search: dict[str, Any], max_epochs: int) -> list[TrialRow]:
    """A row per trial of a Tune ``ResultGrid``: its last and best kNN top-1 from ``get_dataframe``.

    A trial that ended before ``max_epochs`` was stopped by ASHA when Tune terminated it, and is
    unfinished when the search itself was stopped (SIGINT, SIGTERM) while it ran or waited.
    """
    last = _by_trial(result_grid.get_dataframe())
    best = _by_trial(result_grid.get_dataframe(filter_metric=METRIC, filter_mode="max"))
    rows = []
    for result, tune_status in zip(result_grid, _tune_statuses(result_grid), strict=True):
        config = result.config or {}
        trial_id = str((result.metrics or {}).get("trial_id") or _id_from_path(result.path))
        epochs = int((result.metrics or {}).get("epoch") or 0)
        if result.error is not None:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            status, error = "error", (lines[-1] if lines else type(result.error).__name__)[:300]
        elif epochs >= max_epochs:
            status, error = "completed", ""
        elif tune_status in (None, "TERMINATED"):
            status, error = "stopped early (ASHA)", ""
        else:
            status, error = UNFINISHED, ""
        rows.append(
            TrialRow(
                trial_id=trial_id,
                arm=trial_arm(search, config).name,
                values=trial_values(search, config),
                final=_score(last.get(trial_id)),
                best=_score(best.get(trial_id)),
                epochs=epochs,
                status=status,
                error=error,
            )
        )
    return sorted(rows, key=lambda r: (r.final is None, -(r.final or 0.0)))


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The completed trial with the highest final kNN top-1 (else the highest best-so-far)."""
    done = [r for r in rows if r.status == "completed" and r.final is not None]
    if done:
        return max(done, key=lambda r: r.final)
    scored = [r for r in rows if r.best is not None]
    return max(scored, key=lambda r: r.best) if scored else None


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _keys(rows: list[TrialRow]) -> list[str]:
    return sorted({k for r in rows for k in r.values})


def write_tables(rows: list[TrialRow], folder: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md`` of the trial table; returns both paths."""
    keys = _keys(rows)
    head = ["trial", "arm", *keys, "final kNN top-1", "best kNN top-1", "epochs", "status", "error"]
    table = [
        [
            r.trial_id,
            r.arm,
            *[r.values.get(k, "") for k in keys],
            _num(r.final),
            _num(r.best),
            r.epochs,
            r.status,
            r.error,
        ]
        for r in rows
    ]
    csv_path, md_path = folder / "results.csv", folder / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        writer.writerows(table)
    show = [
        [(f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "/") for v in row] for row in table
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in show]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def best_config_file(row: TrialRow, search: dict[str, Any], folder: Path, batch: int | None) -> Path:
    """Write ``<folder>/configs/experiment/best.yaml``: a preset that reproduces ``row``'s settings.

    ``python pipelines/pretrain.py --config-dir <folder>/configs experiment=best`` then runs it.
    The evaluation keys (``eval.*``) and the run's name and storage are left to the new run.
    """
    arm = next(a for a in arms(search) if a.name == row.arm)
    groups, values = [], {}
    for item in [*arm.overrides, *(f"{k}={v!r}" for k, v in row.values.items())]:
        key, _, raw = item.partition("=")
        key = key.lstrip("+~")
        if "." not in key and (key in GROUPS or "/" in key):
            groups.append({f"override /{key}": raw})
        elif not key.startswith(("eval.", "trainer.storage_path", "trainer.name")):
            values[key] = yaml.safe_load(raw)
    if batch is not None:
        values["trainer.batch_size"] = batch
    values["experiment_name"] = f"{search['name']}_best"
    body = {"defaults": [f"/experiment/{arm.experiment}", *groups, "_self_"], **_nest(values)}
    path = folder / "configs" / "experiment" / "best.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# @package _global_\n"
        f"# Best trial {row.trial_id} of search {search['name']!r}: final kNN top-1 {_num(row.final)}, "
        f"best {_num(row.best)}, {row.epochs} epochs.\n"
        f"# python pipelines/pretrain.py --config-dir {folder / 'configs'} experiment=best\n"
    )
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path


def _log_axis(ax: Any, xs: list[float]) -> None:
    """A log x axis; within a decade, four plain-number ticks (the log labels overlapped there)."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator

    ax.set_xscale("log")
    if min(xs) > 0 and max(xs) < 10 * min(xs):
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_locator(NullLocator())


def plot_params(rows: list[TrialRow], search: dict[str, Any], path: Path) -> Path | None:
    """One panel per searched key: each trial's final kNN top-1 against the key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = {k: next(iter(s)) for a in arms(search) for k, s in a.params.items()}
    keys = [k for k in _keys(rows) if any(r.values.get(k) is not None and r.final is not None for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    best = best_row(rows)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r.values[key], r.final, r) for r in rows if key in r.values and r.final is not None]
        numeric = all(isinstance(x, int | float) and math.isfinite(x) for x, _, _ in pts)
        labels = sorted({str(x) for x, _, _ in pts}) if not numeric else []
        for x, y, r in pts:
            xv = x if numeric else labels.index(str(x))
            marker, color = ("*", "C3") if r is best else ("o", "C0" if r.status == "completed" else "C7")
            ax.scatter([xv], [y], marker=marker, s=120 if r is best else 30, color=color)
        if numeric and specs.get(key) == "loguniform":
            _log_axis(ax, [x for x, _, _ in pts])
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=key, ylabel="final kNN top-1 (%)")
    fig.suptitle(f"search {search['name']}: star = best, grey = stopped early")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
