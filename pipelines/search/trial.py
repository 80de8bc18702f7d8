"""One Tune trial: compose the trial's pretraining config and run it, reporting each epoch to Tune.

The trial is a light Tune function trainable (``{"cpu": 0.01}``) that builds a Ray Train
``TorchTrainer`` through :func:`~pipelines.training.run.pretrain` (the Ray 2.60 pattern; handing a
trainer to the Tuner is deprecated). Its pretraining run lives in ``<search>/trials/<trial id>``, so
a trial restarted after the driver died resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pipelines.config.paths import resolve_paths
from pipelines.core.config_schema import register
from pipelines.core.run_files import METRICS_JSONL
from pipelines.search.space import trial_overrides
from pipelines.training.run import pretrain


def compose_pretrain(config_dir: str, overrides: list[str], project_root: str) -> dict[str, Any]:
    """The resolved pretraining config for ``overrides`` (Hydra's compose API, paths absolute).

    Inside a running Hydra app the app's own search path is used (``configs/`` plus any
    ``--config-dir``); elsewhere ``config_dir``.
    """
    register()
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (tune.py): its search path has configs/
        cfg = compose("pretrain", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose("pretrain", overrides=overrides)
    return resolve_paths(OmegaConf.to_container(cfg, resolve=True), Path(project_root))


def keep_views_per_step(cfg: dict[str, Any], views_per_step: int) -> int:
    """Set ``trainer.batch_size`` so that batch x (K + 1) stays near ``views_per_step``.

    The batch is rounded down to a multiple of twice the worker count (at least that); returns it.
    """
    workers = int(cfg["trainer"]["num_workers"])
    unit = 2 * workers
    batch = max(unit, (views_per_step // (int(cfg["objective"]["K"]) + 1)) // unit * unit)
    cfg["trainer"]["batch_size"] = batch
    return batch


def trial_config(spec: dict[str, Any], config: dict[str, Any], name: str) -> tuple[list[str], dict[str, Any]]:
    """``(overrides, resolved pretraining config)`` of the trial ``name`` with Tune ``config``."""
    overrides = trial_overrides(spec["search"], config)
    cfg = compose_pretrain(spec["config_dir"], overrides, spec["project_root"])
    # set, not parsed: Hydra would read an id like 982e1_00000 as a float, a path with ',' as a list
    cfg["trainer"].update(storage_path=str(spec["trials_dir"]), name=str(name))
    if spec.get("preemption_watcher"):  # tune.preemption_watcher=true (or trainer.preemption_watcher=true)
        cfg["trainer"]["preemption_watcher"] = True
    if spec.get("read_task_cpus"):  # the trial's share of the CPUs kept for data (searches)
        cfg["trainer"]["read_task_cpus"] = float(spec["read_task_cpus"])
    if spec.get("views_per_step"):
        keep_views_per_step(cfg, int(spec["views_per_step"]))
    return overrides, cfg


def all_but_the_last_epoch(epochs: int) -> Any:
    """A Ray Train callback that passes each epoch's report on to Tune, except the run's last one.

    The last epoch is what ends a trial: ASHA stops it at ``max_t``, and Tune then ends the trial
    with its Train run, which at that moment is still in its final evaluation (the trial folder
    was left without ``results.json``, ``results.md`` or ``report.png``). :func:`run_trial` reports
    that epoch itself once the run has returned.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class AllButTheLastEpoch(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if int(metrics[0].get("epoch") or 0) < epochs:
                super().after_report(run_context, metrics, checkpoint)

    return AllButTheLastEpoch()


def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The Tune function trainable (``spec`` bound with ``tune.with_parameters``)."""
    from ray import tune

    name = tune.get_context().get_trial_id()
    _, cfg = trial_config(spec, config, name)
    outcome = pretrain(cfg, callbacks=[all_but_the_last_epoch(int(cfg["trainer"]["epochs"]))])
    # the run's last epoch (or, after a driver restart, that of a run finished before it), reported
    # now that its results files are written
    rows = [json.loads(x) for x in (Path(outcome.run_dir) / METRICS_JSONL).read_text().splitlines() if x]
    last = [r for r in rows if "epoch/knn_top1" in r][-1]
    tune.report({"knn/top1": last["epoch/knn_top1"], "epoch": last["epoch"] + 1})
