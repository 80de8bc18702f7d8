"""Helpers for tests that run pretraining: configs, run-folder files, waiting, killing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config.paths import resolve_paths
from pipelines.core.config_schema import register

ROOT = Path(__file__).resolve().parents[2]


def smoke(tmp_path: Path, *overrides: str) -> dict:
    """The resolved ``experiment=smoke`` config with runs kept under ``tmp_path``."""
    register()  # also in processes without the test session's conftest (the multi-node helper)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "pretrain", overrides=["experiment=smoke", f"trainer.storage_path={tmp_path}", *overrides]
        )
    return resolve_paths(OmegaConf.to_container(cfg, resolve=True), ROOT)


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (none when it is missing), without a last line still being
    written (no newline yet): tests read files a run appends to while it runs."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the part after the last newline is unfinished
    return [json.loads(line) for line in lines if line.strip()]


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` from the run's ``metrics.jsonl``; fails if a step was logged twice."""
    rows = [r for r in jsonl(run_dir / "metrics.jsonl") if "loss/total" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss/total"] for r in rows}


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def worker_pid(run_dir: Path, rank: int = 0) -> int | None:
    """The PID of the newest Ray Train worker of ``rank`` recorded in ``<run>/workers.jsonl``."""
    rows = [r for r in jsonl(run_dir / "workers.jsonl") if r["rank"] == rank]
    return rows[-1]["pid"] if rows else None


def wait_until_free(ray: Any, seconds: float = 60.0) -> dict:
    """Wait until every CPU of the cluster is free again; the free resources."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        free, total = ray.available_resources(), ray.cluster_resources()
        if free.get("CPU", 0) >= total.get("CPU", 0) - 1e-6:
            return free
        time.sleep(1)
    return ray.available_resources()


def watchers() -> int:
    """Ray Train PreemptionWatcher actors the cluster has seen, alive or dead (GCS's actor table:
    the state API needs the dashboard, which the test cluster runs without)."""
    from ray._private import state

    return sum(a["ActorClassName"] == "PreemptionWatcher" for a in state.actors().values())
