"""The driver of ``pipelines/tune.py``: a Tune search of pretraining runs, resumable by name.

``<tune.storage_path>/<tune.name>/`` holds ``search.yaml`` (the search as run), ``tune/`` (Tune's
experiment state), ``trials/<trial id>/`` (each trial's pretraining run: checkpoints, TensorBoard,
metrics), ``results.csv`` / ``results.md`` (one row per trial), ``best_metric.png`` and
``configs/experiment/best.yaml`` (the best trial's settings as a preset).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException

from pipelines.config.changes import config_changes
from pipelines.config.checks import check_config, worker_resources
from pipelines.config.paths import check_shared_storage
from pipelines.core.errors import ConfigError, run_command
from pipelines.core.run_files import read_run_file
from pipelines.core.storage import is_uri
from pipelines.data.loader import open_training_source
from pipelines.ray_session import alive_nodes, connect
from pipelines.search.callbacks import ReleaseTrialResources, release_trial_resources
from pipelines.search.results import METRIC, best_config_file, best_row, plot_params, trial_rows, write_tables
from pipelines.search.space import SEP, SearchConfigError, arms, param_space, trial_overrides
from pipelines.search.stop import (
    SearchInterruptedError,
    SearchTerminatedError,
    graceful_stop,
    raise_stopped,
)
from pipelines.search.trial import compose_pretrain, keep_views_per_step, run_trial

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SearchOutcome:
    """What :func:`search` returns: the folder, the rows, the best row and the files written."""

    folder: Path
    rows: list[Any]
    best: Any
    files: dict[str, Path]


# a stopped search: its message (no prefix) and exit code
STOPS: dict[type[Exception], tuple[str, int]] = {
    SearchTerminatedError: ("", SearchTerminatedError.exit_code),
    SearchInterruptedError: ("", SearchInterruptedError.exit_code),
}
TRIAL_DRIVER_CPU = 0.01  # the Tune function trainable that builds the trial's TorchTrainer


def read_task_cpus(data_cpus: float) -> float:
    """CPUs a trial's Ray Data read task reserves: its share ``data_cpus``, at most one.

    A whole CPU per read task (the default outside searches) let only one task run at a time
    beside two trials on 2 cores, so the trials waited for data half of the time
    (docs/searches.md).
    """
    return min(1.0, data_cpus)


def concurrency(cluster: dict[str, float], cfg: dict[str, Any], data_cpus: float, cap: int | None) -> int:
    """Trials that fit at once on the cluster, given one trial's ``ScalingConfig``.

    ``n`` trials fit when ``n x (num_workers x CPUs per worker + the trial driver's 0.01)`` plus
    ``max(read task CPUs, n x data_cpus)`` CPUs for their Ray Data tasks (a read task reserves
    :func:`read_task_cpus`; a cluster without that much free deadlocks) are at most the
    cluster's CPUs, and likewise ``n x num_workers x GPUs per worker`` for GPUs. ``cap`` limits
    the result.

    Raises:
        ConfigError: when not even one trial fits.
    """
    tr = cfg["trainer"]
    workers = int(tr["num_workers"])
    per_worker = worker_resources(tr)
    trial_cpu = workers * per_worker.get("CPU", 0.0) + TRIAL_DRIVER_CPU
    total = cluster.get("CPU", 0.0)
    fits = 0
    while (fits + 1) * trial_cpu + max(read_task_cpus(data_cpus), (fits + 1) * data_cpus) <= total + 1e-9:
        fits += 1
    if tr.get("use_gpu"):
        gpu = workers * per_worker.get("GPU", 0.0)
        fits = min(fits, math.floor(cluster.get("GPU", 0.0) / gpu))
    if fits < 1:
        raise ConfigError(
            f"one trial needs {trial_cpu:g} CPU(s) for its workers plus 1 for its data"
            f"{' and GPUs' if tr.get('use_gpu') else ''}, but the cluster has {total:g} CPU(s)"
            f"{' and ' + format(cluster.get('GPU', 0), 'g') + ' GPU(s)' if tr.get('use_gpu') else ''}: "
            "lower trainer.num_workers / trainer.resources_per_worker in search.overrides"
        )
    return min(fits, cap) if cap else fits


def _check_trials(search: dict[str, Any], config_dir: str) -> tuple[dict[str, Any], int | None, int]:
    """Compose and check each arm's starting config (without sampled values) before Ray starts.

    Returns:
        The first arm's config, the views per step to keep (``constant_views``), and the most
        epochs any arm runs (ASHA's ``max_t``).
    """
    base_cfg, views, epochs = None, None, 0
    for arm in arms(search):
        where = f"search arm {arm.name!r} (experiment={arm.experiment} + its overrides)"
        try:
            cfg = compose_pretrain(
                config_dir, [f"experiment={arm.experiment}", *arm.overrides], str(PROJECT_ROOT)
            )
        except HydraException as err:
            raise ConfigError(f"{where}: {err}") from err
        try:
            check_config(cfg)
            open_training_source(cfg["dataset"])  # its shards, splits and class count, before Ray
        except (ConfigError, ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{where}:\n{err}") from err
        base_cfg = base_cfg or cfg
        epochs = max(epochs, int(cfg["trainer"]["epochs"]))
        if search.get("batch_rule") == "constant_views" and views is None:
            views = int(cfg["trainer"]["batch_size"]) * (int(cfg["objective"]["K"]) + 1)
    for arm in arms(search):
        _check_listed_values(search, arm, config_dir, views)
    return base_cfg, views, epochs


def _check_listed_values(search: dict[str, Any], arm: Any, config_dir: str, views: int | None) -> None:
    """Check each value a ``grid`` or ``choice`` lists, as its trial would run (a bad one wasted a trial)."""
    params = [(f"{arm.name}{SEP}{k}", k, spec) for k, spec in arm.params.items()]
    params += [(k, k, spec) for k, spec in (search.get("shared") or {}).items()]
    for name, key, spec in params:
        kind, values = next(iter(spec.items()))
        if kind not in ("grid", "choice"):
            continue
        for value in values:
            where = f"search arm {arm.name!r}: {key}={value!r} (listed in its {kind})"
            overrides = trial_overrides(search, {"arm": arm.name, name: value})
            try:
                cfg = compose_pretrain(config_dir, overrides, str(PROJECT_ROOT))
                if views:
                    keep_views_per_step(cfg, views)
                check_config(cfg)
            except (HydraException, ConfigError) as err:
                raise ConfigError(f"{where}:\n{err}") from err


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_search_settings(search: dict[str, Any], tune_cfg: dict[str, Any]) -> None:
    """The search's own numbers (Ray Tune would assert, or run nothing and exit 0).

    Raises:
        ConfigError: naming each bad key and what it takes.
    """
    errors = []
    n = search.get("num_samples", 1)
    if not _count(n):
        errors.append(f"search.num_samples={n!r}: must be an integer >= 1 (trials per grid point)")
    asha = search.get("asha")
    if isinstance(asha, dict):
        grace, factor = asha.get("grace_period", 1), asha.get("reduction_factor", 2)
        if not _count(grace):
            errors.append(
                f"search.asha.grace_period={grace!r}: must be an integer >= 1 (epochs before a trial "
                "may be stopped)"
            )
        if not (isinstance(factor, int | float) and not isinstance(factor, bool) and factor > 1):
            errors.append(
                f"search.asha.reduction_factor={factor!r}: must be a number > 1 (1 in it goes on at "
                "each rung)"
            )
    elif asha not in (None, False):
        errors.append(f"search.asha={asha!r}: {{grace_period: <n>, reduction_factor: <r>}} or null (no ASHA)")
    storage = str(tune_cfg.get("storage_path") or "")
    if is_uri(storage):  # Path() would make s3://b/x a local folder named "s3:"
        errors.append(
            f"tune.storage_path={storage}: a search keeps its trials and tables in a folder; use a local "
            "folder, or one every node shares (NFS) with trainer.storage_shared=true in search.overrides "
            "(CACR_STORAGE set to a URI: set tune.storage_path=<folder>)"
        )
    cap = tune_cfg.get("max_concurrent_trials")
    if cap is not None and not _count(cap):
        errors.append(
            f"tune.max_concurrent_trials={cap!r}: must be an integer >= 1, or null (as many as fit)"
        )
    if errors:
        raise ConfigError("\n".join(errors))


def _refuse_changed(folder: Path, search: dict[str, Any]) -> None:
    """Refuse to resume a search under another search config, listing what differs.

    A folder where no trial ever started (the search failed before Ray Tune did) takes the new
    config: there is nothing to mix it with.
    """
    saved_path = folder / "search.yaml"
    if not saved_path.exists():
        return
    saved = read_run_file(saved_path)
    changes = config_changes(saved if isinstance(saved, dict) else {}, search, "search.")
    if not changes:
        return
    from ray import tune

    if not tune.Tuner.can_restore(str(folder / "tune")):
        print(f"search {folder.name!r} never started a trial: starting it with the new settings", flush=True)
        return
    raise ConfigError(
        f"search {folder.name!r} already exists in {folder} with another search config:\n  "
        + "\n  ".join(changes)
        + "\nresume it with the same settings or pick a new tune.name=<name>"
    )


def search(cfg: dict[str, Any]) -> SearchOutcome:
    """Run (or resume) the search of ``cfg`` (the ``tune`` config) and write its results.

    Raises:
        ConfigError: before Ray starts, for a bad search or pretraining config.
    """
    spec_search, tune_cfg = cfg["search"], cfg["tune"]
    try:
        all_arms = arms(spec_search)
    except SearchConfigError as err:
        raise ConfigError(str(err)) from err
    config_dir = str(PROJECT_ROOT / "configs")
    check_search_settings(spec_search, tune_cfg)
    base_cfg, views, max_epochs = _check_trials(spec_search, config_dir)
    folder = Path(str(tune_cfg["storage_path"])).expanduser().resolve() / str(
        tune_cfg.get("name") or spec_search["name"]
    )
    _refuse_changed(folder, spec_search)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.yaml").write_text(yaml.safe_dump(spec_search, sort_keys=False))

    from ray import tune

    connect((cfg.get("ray") or {}).get("address"))
    shared = bool(base_cfg["trainer"].get("storage_shared"))
    check_shared_storage({"storage_path": str(folder), "storage_shared": shared}, alive_nodes())
    import ray

    conc = concurrency(
        ray.cluster_resources(),
        base_cfg,
        float(tune_cfg.get("data_cpus_per_trial", 0.5)),
        tune_cfg.get("max_concurrent_trials"),
    )
    spec = {
        "search": spec_search,
        "trials_dir": str(folder / "trials"),
        "config_dir": config_dir,
        "project_root": str(PROJECT_ROOT),
        "views_per_step": views,
        "preemption_watcher": bool(tune_cfg.get("preemption_watcher")),
        "read_task_cpus": read_task_cpus(float(tune_cfg.get("data_cpus_per_trial", 0.5))),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": TRIAL_DRIVER_CPU})
    exp_dir = folder / "tune"
    if tune.Tuner.can_restore(str(exp_dir)):
        print(f"resuming search {folder.name} from {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False)
    else:
        n = int(spec_search.get("num_samples", 1))
        print(
            f"search {folder.name}: {len(all_arms)} arm(s), {n} sample(s) per grid point, up to "
            f"{max_epochs} epochs per trial, {conc} trial(s) at a time; folder {folder}",
            flush=True,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec_search),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=n,
                max_concurrent_trials=conc,
                scheduler=_scheduler(spec_search.get("asha"), max_epochs),
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(folder),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[ReleaseTrialResources(str(folder / "trials"))],
                verbose=int(tune_cfg.get("verbose", 1)),
            ),
        )
    t0 = time.perf_counter()
    with graceful_stop() as seen:
        grid = tuner.fit()
    for run_dir in (folder / "trials").glob("*"):  # whatever a callback could not reach
        release_trial_resources(run_dir)
    if seen:  # stopped: the live grid calls every trial TERMINATED; the saved state knows which resume
        grid = _saved_grid(exp_dir, trainable, grid)
    rows = trial_rows(grid, spec_search, max_epochs)
    best = best_row(rows)
    csv_path, md_path = write_tables(rows, folder)
    files = {"csv": csv_path, "md": md_path}
    if best is not None:
        batch = None
        if views:
            arm_cfg = compose_pretrain(
                config_dir, trial_overrides(spec_search, _tune_config(best)), str(PROJECT_ROOT)
            )
            batch = keep_views_per_step(arm_cfg, views)
        files["best"] = best_config_file(best, spec_search, folder, batch)
    plot = plot_params(rows, spec_search, folder / "best_metric.png")
    if plot:
        files["plot"] = plot
    if seen:
        raise_stopped(folder.name, seen)
    print(f"search {folder.name}: {len(rows)} trials in {time.perf_counter() - t0:.0f}s", flush=True)
    return SearchOutcome(folder, rows, best, files)


def _scheduler(asha: dict[str, Any] | None, max_epochs: int) -> Any:
    """ASHA on the ``epoch`` counter; ``search.asha: null`` runs every trial to the end (FIFO)."""
    from ray.tune.schedulers import ASHAScheduler

    if asha is None or asha is False:
        return None
    return ASHAScheduler(
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=int(asha.get("grace_period", 1)),
        reduction_factor=float(asha.get("reduction_factor", 2)),
    )


def _saved_grid(exp_dir: Path, trainable: Any, live: Any) -> Any:
    """The results of a stopped search as Tune saved them (unfinished trials not ``TERMINATED``)."""
    from ray import tune

    try:
        return tune.Tuner.restore(str(exp_dir), trainable).get_results()
    except Exception as err:  # the tables still come, with the live statuses
        print(f"WARNING: could not read the saved search state ({err}); statuses as Tune left them")
        return live


def _tune_config(row: Any) -> dict[str, Any]:
    """A Tune config equivalent to ``row`` (its arm and values)."""
    return {"arm": row.arm, **{f"{row.arm}{SEP}{k}": v for k, v in row.values.items()}}


def summary(outcome: SearchOutcome) -> str:
    """The lines printed at the end of ``tune.py``."""
    lines = [(outcome.files["md"]).read_text().rstrip()]
    if outcome.best is not None:
        b = outcome.best
        lines.append(f"best: trial {b.trial_id} ({b.arm}) {b.values}: final kNN top-1 {b.final:.2f}")
        lines.append(
            "  rerun it: python pipelines/pretrain.py "
            f"--config-dir {outcome.folder / 'configs'} experiment=best"
        )
    lines.append(f"table: {outcome.files['csv']}  plot: {outcome.files.get('plot', '-')}")
    lines.append(f"TensorBoard: tensorboard --logdir {outcome.folder / 'trials'} --host 127.0.0.1")
    return "\n".join(lines)


def main_with_errors(cfg: dict[str, Any]) -> int:
    """Run :func:`search` and print the summary.

    A config problem exits 2 with one message; a search stopped by SIGINT or SIGTERM exits 130 or
    143 with one line saying how to resume it.
    """
    return run_command(lambda: summary(search(cfg)), STOPS)
