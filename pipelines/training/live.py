"""The run's live figures as Ray metrics, exported to Prometheus next to Ray's own.

Ray prefixes application metrics with ``ray_`` in its Prometheus export, so ``cacr_loss`` is
scraped as ``ray_cacr_loss{run="<name>"}``. ``platform/monitoring/`` has the Grafana dashboard.
"""

from __future__ import annotations

from typing import Any

# our figure name -> (Ray metric name, description)
FIGURES: dict[str, tuple[str, str]] = {
    "throughput/images_per_s": ("cacr_images_per_second", "training images per second (all workers)"),
    "throughput/views_per_s": ("cacr_views_per_second", "augmented views per second (all workers)"),
    "data/wait_fraction": ("cacr_data_wait_fraction", "share of step time spent waiting for data"),
    "loss/total": ("cacr_loss", "training loss at the last logged step"),
    "knn/top1": ("cacr_knn_top1", "kNN top-1 accuracy (%) at the last monitored epoch"),
    "data/bad_images": ("cacr_bad_images", "bad images skipped so far"),
}


class LiveMetrics:
    """Ray ``Gauge`` metrics tagged with the run name; values outside ``FIGURES`` are ignored.

    Ray exports a gauge only for the report intervals in which it was set, so every update sets
    all the figures known so far (a kNN score from the last epoch stays visible between epochs).
    """

    def __init__(self, run: str) -> None:
        """Create the gauges (inside a Ray worker or driver)."""
        from ray.util.metrics import Gauge

        self.tags = {"run": run}
        self.last: dict[str, float] = {}
        self.gauges: dict[str, Any] = {
            key: Gauge(name, description=text, tag_keys=("run",)) for key, (name, text) in FIGURES.items()
        }

    def update(self, values: dict[str, Any]) -> None:
        """Record the known figures found in ``values``, then set every gauge to its latest value."""
        for key, value in values.items():
            if key in self.gauges and isinstance(value, int | float) and value == value:  # not NaN
                self.last[key] = float(value)
        for key, value in self.last.items():
            self.gauges[key].set(value, tags=self.tags)
