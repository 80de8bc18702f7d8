"""The driver of ``pipelines/study.py``: run a study's presets x seeds as one search, then table it.

``<tune.storage_path>/<study name>/`` is the search's folder (``trials/``, ``tune/``,
``results.csv`` of the trials) plus ``study.md``, ``study.csv`` and ``study.png``. Re-running the
same command resumes by name, as a search does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.errors import run_command
from pipelines.search.run import STOPS, search
from pipelines.studies.spec import as_search, cells
from pipelines.studies.table import Stat, collect, write_study


@dataclass
class StudyOutcome:
    """What :func:`run_study` returns."""

    folder: Path
    stats: dict[str, dict[str, Stat]]
    files: dict[str, Path]


def run_study(cfg: dict[str, Any]) -> StudyOutcome:
    """Run (or resume) the study of ``cfg`` (the ``study`` config) and write its table.

    Raises:
        ConfigError: before Ray starts, for a bad study or pretraining config.
    """
    study = cfg["study"]
    cells(study)  # checks the study before anything runs
    tune_cfg = {**cfg["tune"], "name": cfg["tune"].get("name") or study["name"]}
    outcome = search({**cfg, "search": as_search(study), "tune": tune_cfg})
    stats = collect(study, outcome.rows, outcome.folder / "trials")
    return StudyOutcome(outcome.folder, stats, write_study(study, stats, outcome.folder))


def summary(outcome: StudyOutcome) -> str:
    """The lines printed at the end of ``study.py``."""
    files = outcome.files
    return "\n".join(
        [
            files["md"].read_text().rstrip(),
            f"table: {files['csv']}  figure: {files['png']}  folder: {outcome.folder}",
        ]
    )


def main_with_errors(cfg: dict[str, Any]) -> int:
    """Run :func:`run_study` and print the table; errors and stops exit as a search's do."""
    return run_command(lambda: summary(run_study(cfg)), STOPS)
