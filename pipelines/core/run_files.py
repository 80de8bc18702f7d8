"""The names of the files a run folder holds, in one place, and the stop record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.storage import write_atomic

CONFIG_FILE = "config.yaml"  # the resolved config the run started with
CLASS_COUNTS = "class_counts.json"
METRICS_JSONL = "metrics.jsonl"
STOPPED = "stopped.json"  # written by rank 0 when the run stops on purpose (NaN, bad data)
RESUMES = "resumes.jsonl"  # one line per restart: which checkpoint, found how
WORKERS = "workers.jsonl"  # one line per worker start: rank, PID, node
PLACEMENT_GROUPS = "placement_groups.txt"  # the worker groups' placement groups (released by Tune trials)
RESULTS_JSON, RESULTS_MD, REPORT_PNG = "results.json", "results.md", "report.png"


def write_stop(run_dir: str | Path, reason: str, **details: Any) -> Path:
    """Record why the run stopped (read by the driver), atomically."""
    record = {"reason": reason, "time": time.time(), **details}
    return write_atomic(Path(run_dir) / STOPPED, json.dumps(record, indent=2, default=str))


class RunFileError(ValueError):
    """A run's own file that cannot be read (cut short, edited by hand): the message names it."""


def read_run_file(path: str | Path) -> Any:
    """A run's JSON or YAML file (by its suffix), parsed.

    Raises:
        RunFileError: naming the file when it is not valid JSON / YAML.
    """
    path = Path(path)
    try:
        text = path.read_text()
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = " ".join(str(err).split())
        raise RunFileError(
            f"{path} cannot be read ({problem}): it was cut short or edited. Restore it from a copy, "
            f"or move it away{_remedy(path.name)}"
        ) from err


def _remedy(name: str) -> str:
    """What moving ``name`` away costs or gives back."""
    if name == RESULTS_JSON:
        return " (a finished run's final evaluation writes it again when its command is run again)"
    if name == CONFIG_FILE:
        return " together with the run folder: the run's settings cannot be checked without it"
    return ""


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``results.json`` (``{}`` when there is none yet)."""
    path = Path(run_dir) / RESULTS_JSON
    return read_run_file(path) if path.exists() else {}


def final_evaluation_done(results: dict[str, Any]) -> bool:
    """Whether ``results`` hold the run's own final evaluation, not only probes' entries.

    ``linear_probe.py`` may judge a run that is still training; that does not finish it.
    """
    return "pretrained" in results


def keep_probes(run_dir: str | Path, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the probes already judged on the run, so its final evaluation keeps them.

    The probes are the ``linear_probes`` of the run's ``results.json``, when that can be read.
    """
    try:
        probes = read_results(run_dir).get("linear_probes")
    except RunFileError:
        return results
    if not probes:
        return results
    return {**results, "linear_probes": {**probes, **(results.get("linear_probes") or {})}}


def _listed(values: list[Any], show: int = 6) -> str:
    head = ", ".join(str(v) for v in values[:show])
    return f"[{head}{', ...' if len(values) > show else ''}] ({len(values)})"


def other_data_problem(run_dir: str | Path, classes: list[str], counts: list[int]) -> str | None:
    """How the data at hand differs from what the run trained on (its ``class_counts.json``), if it does.

    A dataset may move (a new ``dataset.root``), but it must hold the same classes and the same
    images per class.

    Returns:
        ``None`` when they agree or the run recorded none; else the difference in words.
    """
    path = Path(run_dir) / CLASS_COUNTS
    if not path.exists():
        return None
    saved = read_run_file(path)
    old_classes, old_counts = list(saved.get("classes") or []), [int(c) for c in saved.get("counts") or []]
    new_counts = [int(c) for c in counts]
    if old_classes != list(classes):
        return f"classes {_listed(old_classes)} there, {_listed(list(classes))} here (from {path})"
    if old_counts != new_counts:
        return f"images per class {_listed(old_counts)} there, {_listed(new_counts)} here (from {path})"
    return None
