"""The names of the files a run folder holds, in one place, and the stop record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
