"""Rank 0's view of a run: TensorBoard scalars, ``metrics.jsonl`` and console progress lines."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from pipelines.core.progress import format_seconds
from pipelines.core.run_files import METRICS_JSONL
from pipelines.core.storage import write_atomic


def _step_of(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinity for a line cut short by a crash (dropped)."""
    try:
        return float(json.loads(line).get("step", 0)) if line.strip() else float("inf")
    except (ValueError, AttributeError):
        return float("inf")


class RunLog:
    """Scalars to TensorBoard (``<run>/tensorboard``) and ``<run>/metrics.jsonl``, one row per step.

    On a resumed run everything logged after the checkpoint's step is dropped from both (TensorBoard
    through ``purge_step``), so no step appears twice.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = 0) -> None:
        """Open the writers.

        Args:
            run_dir: the run folder.
            resume_step: the step of the checkpoint the run resumed from; ``None`` appends to what
                is there and drops nothing.
        """
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / METRICS_JSONL
        if self.jsonl.exists() and resume_step is not None:  # keep what the restored state saw
            kept = [ln for ln in self.jsonl.read_text().splitlines() if _step_of(ln) <= resume_step]
            write_atomic(self.jsonl, "".join(ln + "\n" for ln in kept))
        self.writer = SummaryWriter(
            str(self.dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )
        self.started = time.time()

    def scalars(self, step: int, values: dict[str, float], epoch: int | None = None) -> None:
        """Log ``values`` at ``step`` (names like ``loss/total``, ``throughput/images_per_s``)."""
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)
        row = {
            "step": step,
            **({"epoch": epoch} if epoch is not None else {}),
            "time": round(time.time(), 3),  # Unix seconds: when rank 0 logged the row
            **{k: float(v) for k, v in values.items()},
        }
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Log a matplotlib figure."""
        self.writer.add_figure(tag, fig, step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close."""
        self.writer.close()


def progress_line(
    epoch: int,
    epochs: int,
    step: int,
    total: int,
    loss: float,
    images_per_s: float,
    views_per_image: int,
    wait_fraction: float,
    seconds_per_step: float,
) -> str:
    """One console line: where the run is, the loss, the speed and the time left."""
    eta = format_seconds((total - step) * seconds_per_step)
    return (
        f"epoch {epoch + 1}/{epochs}  step {step}/{total}  loss {loss:.4f}  "
        f"{images_per_s:,.0f} img/s  {images_per_s * views_per_image:,.0f} views/s  "
        f"data-wait {100 * wait_fraction:.0f}%  ETA {eta}"
    )


def say(text: str) -> None:
    """One console line from a worker (Ray Train's patched ``print`` would show it twice)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
