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
