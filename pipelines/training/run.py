"""The driver side of a pretraining run: check, prepare the run folder and data, fit, report.

``pretrain(cfg)`` is what ``pipelines/pretrain.py`` hands off to. The run lives in
``<trainer.storage_path>/<trainer.name>/``: Ray Train's checkpoints (``checkpoint_e<epoch>_s<step>``),
``config.yaml`` (the resolved config), ``class_counts.json``, ``tensorboard/``, ``metrics.jsonl``,
``results.json`` and, when the run stopped on purpose, ``stopped.json``. Running the same command
with the same ``trainer.name`` resumes; a different config under an existing name is refused.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.config.changes import config_changes, migrate_saved
from pipelines.config.checks import capacity_problem, check_config
from pipelines.config.paths import check_shared_storage
from pipelines.core import checkpoints as ckpt
from pipelines.core.checkpoints import IncompleteCheckpointError, UnsafeCheckpointError
from pipelines.core.errors import ConfigError, run_command
from pipelines.core.run_files import (
    CLASS_COUNTS,
    CONFIG_FILE,
    STOPPED,
    RunFileError,
    final_evaluation_done,
    other_data_problem,
    read_results,
    read_run_file,
)
from pipelines.core.storage import is_uri, write_atomic
from pipelines.data.loader import open_training_source, training_datasets
from pipelines.data.monitor import monitor
from pipelines.data.recipes import MEAN_STD, eval_crop_for, recipes_for
from pipelines.evaluation.report import encoder_table
from pipelines.ray_session import (
    alive_nodes,
    connect,
    new_local_cluster_resources,
    set_preemption_watcher,
    starts_local_cluster,
)
from pipelines.training.stop import RunInterruptedError, RunTerminatedError, signals_seen, stopped_error
from pipelines.training.worker import train_loop_per_worker


class RunStoppedError(RuntimeError):
    """The run stopped on purpose (non-finite loss, too many bad images); the message says why."""


@dataclass
class RunOutcome:
    """What :func:`pretrain` returns.

    Attributes:
        run_dir: the run folder (logs, config, results).
        results: the final evaluation (``results.json``), empty when the run stopped early.
        seconds: wall time of this invocation.
        dashboard: the Ray dashboard URL, when known.
    """

    run_dir: str
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dashboard: str | None = None


def run_folder(cfg: dict[str, Any]) -> Path:
    """Where the run's own files go (the storage path's run folder; a local mirror for URI storage)."""
    storage, name = str(cfg["trainer"]["storage_path"]), str(cfg["trainer"]["name"])
    if is_uri(storage):
        return Path(os.path.expanduser("~/cacr-runs/.local-logs")) / name
    return Path(storage) / name


def _changed(saved: dict[str, Any], cfg: dict[str, Any], group: str, key: str) -> tuple[Any, Any] | None:
    """``(saved, new)`` values of ``group.key`` when they differ."""
    old, new = (saved.get(group) or {}).get(key), (cfg.get(group) or {}).get(key)
    return (old, new) if old != new else None


def _length_hint(old: Any, new: Any) -> str:
    """Why a run's length cannot change, and how to plan for a shorter invocation."""
    if isinstance(old, int) and isinstance(new, int) and new < old:
        plan = (
            f"to stop this run after epoch {new}, keep trainer.epochs={old} and add "
            f"trainer.stop_at_epoch={new}"
        )
    else:
        plan = (
            "a run cannot be extended: plan the whole length with trainer.epochs and stop early with "
            "trainer.stop_at_epoch=N, then run the same command again without it to go on"
        )
    return f"\n(a run's length is part of its learning-rate schedule; {plan})"


def _check_existing(run_dir: Path, cfg: dict[str, Any]) -> bool:
    """Refuse to resume a run under a changed config; return whether the run already finished."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.exists():
        return False
    saved = read_run_file(saved_path)
    changes = config_changes(migrate_saved(saved), cfg)
    tr, finished = cfg["trainer"], final_evaluation_done(read_results(run_dir))
    # storage is listed only for a changed config (pretrain lists it again for torn checkpoints)
    if changes and not finished and not any(ckpt.scan_checkpoints(str(tr["storage_path"]), str(tr["name"]))):
        print(  # it failed before its first checkpoint: nothing of the old settings to mix in
            f"run {tr['name']!r} in {run_dir} never saved a checkpoint: starting it again with the new "
            "settings:\n  " + "\n  ".join(changes),
            flush=True,
        )
        return False
    if changes:
        length = _changed(saved, cfg, "trainer", "epochs")
        raise ConfigError(
            f"run {cfg['trainer']['name']!r} already exists in {run_dir} with other settings:\n  "
            + "\n  ".join(changes)
            + "\nto start a new run pick another trainer.name=<name>; to resume it, use its settings"
            + (_length_hint(*length) if length else "")
        )
    return finished


def _check_checkpoints(cfg: dict[str, Any]) -> list[ckpt.Found]:
    """Say which checkpoints a resumed run cannot use; refuse when that would discard its training.

    A folder whose writing never finished (a crash mid-write) is expected and skipped. One that
    was complete once (its ``COMPLETE`` marker is there) but whose files changed since, when no
    complete checkpoint is left, would make the run start over silently: refused, naming it.

    Returns:
        The run's complete checkpoints (none: it starts from its first step).

    Raises:
        RunFileError: when every checkpoint of the run is torn and one of them was complete.
    """
    tr = cfg["trainer"]
    found, torn = ckpt.scan_checkpoints(str(tr["storage_path"]), str(tr["name"]))
    if not torn:
        return found
    listed = "".join(f"\n  {t.path}: {t.problem}" for t in torn)
    if not found and any(t.was_complete for t in torn):
        raise RunFileError(
            f"run {tr['name']!r} has no usable checkpoint, so it would start over from its first step:"
            f"{listed}\nrestore the folder from a copy; to train from the start, move these checkpoints "
            "away (or pick another trainer.name)"
        )
    latest = ckpt.newest(found)
    where = f"resuming from {latest.path}" if latest else "starting from the first step"
    print(f"WARNING: checkpoints skipped, {where}:{listed}", flush=True)
    return found


def _write_run_files(run_dir: Path, cfg: dict[str, Any], counts: list[int], classes: list[str]) -> None:

    write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(cfg, sort_keys=False))
    write_atomic(
        run_dir / CLASS_COUNTS,
        json.dumps({"classes": classes, "counts": counts, "total": int(sum(counts))}, indent=1) + "\n",
    )


def _report_bad_images(run_dir: Path, data_monitor: Any) -> None:
    """Write the bad images met while training to ``<run>/bad_images.json`` and say how many."""
    import ray

    snap = ray.get(data_monitor.snapshot.remote())
    (run_dir / "bad_images.json").write_text(json.dumps(snap, indent=1) + "\n")
    if snap["bad"]:
        print(
            f"{snap['bad']} bad image(s) skipped while training ({100 * snap['bad_fraction']:.2f}%); "
            f"list in {run_dir / 'bad_images.json'}",
            flush=True,
        )


def checkpoint_problem(err: BaseException) -> str | None:
    """The checkpoint error a worker failed with (unsafe or torn file), or ``None`` for anything else.

    Ray Train raises a ``WorkerGroupError`` whose ``worker_failures`` hold each rank's exception.
    """
    pending: list[BaseException] = [err, *(getattr(err, "worker_failures", None) or {}).values()]
    seen: set[int] = set()
    while pending:
        e = pending.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, IncompleteCheckpointError | UnsafeCheckpointError):
            return str(e)
        pending += [c for c in (e.__cause__, getattr(e, "cause", None)) if isinstance(c, BaseException)]
    return None


def _dataset_error(ds: dict[str, Any], err: Exception) -> ConfigError:
    """A dataset that cannot be read as configured, as a config error naming the dataset."""
    return ConfigError(f"dataset={ds['name']} dataset.root={ds.get('root')}: {err}")


def pretrain(cfg: dict[str, Any], callbacks: list[Any] | None = None) -> RunOutcome:
    """Check ``cfg``, then run (or resume) pretraining on Ray Train and evaluate the encoder.

    Args:
        cfg: the resolved config (plain dict, paths absolute).
        callbacks: Ray Train ``RunConfig`` callbacks (a Tune trial passes ``TuneReportCallback``).

    Returns:
        The run folder and results.

    Raises:
        ConfigError: before Ray starts, for any config problem.
        RunStoppedError: when training stopped on a non-finite loss or too many bad images.
    """
    started = time.time()
    plan = check_config(cfg)
    run_dir = run_folder(cfg)
    if _check_existing(run_dir, cfg):
        print(
            f"run {cfg['trainer']['name']!r} has already finished; its results are in {run_dir}", flush=True
        )
        return RunOutcome(str(run_dir), read_results(run_dir), 0.0)
    resuming = bool(_check_checkpoints(cfg))
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tr, ds, aug = cfg["trainer"], cfg["dataset"], cfg["augment"]
    try:
        source = open_training_source(ds)  # no shards there, a split they lack: exit 2 before Ray
    except (ValueError, FileNotFoundError) as err:
        raise _dataset_error(ds, err) from err
    address = (cfg.get("ray") or {}).get("address")
    local = new_local_cluster_resources(address)
    short = capacity_problem(tr, local) if local else None
    if short:  # the cluster this command would start cannot hold the run: said before it starts
        raise ConfigError(short)
    dashboard = connect(address)
    check_shared_storage(tr, alive_nodes())
    short = capacity_problem(tr, ray.cluster_resources())
    in_driver = ray.get_runtime_context().get_actor_id() is None  # not a Tune trial's actor
    if short and in_driver and starts_local_cluster(address):
        raise ConfigError(short)  # this machine's cluster will not grow: the run would wait for ever
    if short:
        print(f"WARNING: {short}; the run waits until the cluster has them (an autoscaler adding nodes)")
    name = str(tr["name"])
    data_monitor = monitor(name, float(ds["max_bad_fraction"]))  # keep the handle: it owns the actor
    recipes = recipes_for(aug, plan.num_views)
    try:
        data = training_datasets(
            ds,
            recipes,
            eval_size=recipes[0].size,
            seed=int(tr["seed"]),
            run=name,
            bank_size=int(cfg["eval"]["knn_bank_size"]),
            eval_crop=eval_crop_for(aug, cfg["eval"]),
            workers=int(tr["num_workers"]),
            task_cpus=float(tr["read_task_cpus"]),
            source=source,
        )
    except (ValueError, FileNotFoundError) as err:  # no readable shards: one message, exit 2
        raise _dataset_error(ds, err) from err
    if data.unreadable:  # shards that could not be opened go into the run's report too
        ray.get(data_monitor.add.remote(0, data.unreadable))
    n_train, workers = data.train_size, int(tr["num_workers"])
    steps_per_epoch = (n_train // workers) // plan.per_worker_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"trainer.batch_size={tr['batch_size']} is larger than the {n_train} training images: lower it"
        )
    if resuming:  # the same data only
        other = other_data_problem(run_dir, list(data.classes), list(data.train_counts))
        if other:
            raise ConfigError(
                f"run {name!r} trained on other data than dataset.root={ds['root']} holds: {other}. "
                "A moved dataset must hold the same images: point dataset.root at them, or pick "
                "another trainer.name to train on this one"
            )
    _write_run_files(run_dir, cfg, data.train_counts, data.classes)
    (run_dir / STOPPED).unlink(missing_ok=True)
    mean, std = MEAN_STD[aug["mean_std"]]
    run = {
        "dir": str(run_dir),
        "name": name,
        "storage": str(tr["storage_path"]),
        "steps_per_epoch": steps_per_epoch,
        "num_classes": len(data.classes),
        "classes": list(data.classes),
        "train_counts": [int(c) for c in data.train_counts],
        "num_views": plan.num_views,
        "local_crops": plan.local_crops,
        "per_worker_batch": plan.per_worker_batch,
        "lr": plan.lr,
        "mean": list(mean),
        "std": list(std),
    }
    print(
        f"run {name}: {n_train:,} images, {steps_per_epoch} steps/epoch x {tr['epochs']} epochs, "
        f"{workers} worker(s) x {plan.per_worker_batch} images x {plan.num_views} views; folder {run_dir}",
        flush=True,
    )
    if dashboard:
        print(f"Ray dashboard: {dashboard}", flush=True)
    gpu = bool(tr.get("use_gpu"))
    set_preemption_watcher(bool(tr.get("preemption_watcher")))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "run": run},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpu,
            resources_per_worker=dict(tr.get("resources_per_worker") or {}) or None,
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=str(tr["storage_path"]),
            checkpoint_config=CheckpointConfig(num_to_keep=int(tr["num_to_keep"])),
            failure_config=FailureConfig(max_failures=int(tr["max_failures"])),
            callbacks=callbacks,
        ),
        datasets=data.datasets,
        dataset_config=data.data_config,
    )
    failed: BaseException | None = None
    with signals_seen() as seen:
        try:
            trainer.fit()
        except (Exception, SystemExit) as err:  # Ray Train's SIGINT abort ends fit() with SystemExit
            failed = err
    if seen:
        latest = ckpt.newest_complete(str(tr["storage_path"]), name)
        raise stopped_error(name, seen, latest.uri if latest else None) from failed
    if failed is not None:
        problem = checkpoint_problem(failed) if isinstance(failed, Exception) else None
        if problem is None:
            raise failed
        raise RunStoppedError(f"cannot resume run {name!r}: {problem}") from failed
    _report_bad_images(run_dir, data_monitor)
    stopped = run_dir / STOPPED
    if stopped.exists():
        info = read_run_file(stopped)
        raise RunStoppedError(
            f"{info['reason']}; last good checkpoint: {info.get('last_good_checkpoint')}; "
            f"details in {stopped}"
        )
    return RunOutcome(str(run_dir), read_results(run_dir), time.time() - started, dashboard)


def results_table(outcome: RunOutcome, cfg: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    res = outcome.results
    lines = []
    done = final_evaluation_done(res)
    if not done:
        tr = cfg["trainer"]
        lines.append(
            f"stopped after epoch {tr.get('stop_at_epoch') or tr['epochs']} of {tr['epochs']} "
            "(trainer.stop_at_epoch): no final evaluation yet; the same command without "
            "trainer.stop_at_epoch continues the run"
        )
    else:
        label = f"pretrained ({cfg['objective']['name']}, K={cfg['objective']['K']})"
        rows = [(label, res.get("pretrained", {}))]
        if "random_init" in res:
            rows.append(("same encoder, random init (BN recomputed)", res["random_init"]))
        lines += encoder_table(rows)
        if "random_init" in res:
            gain = res["pretrained"]["knn_top1"] - res["random_init"]["knn_top1"]
            lines.append(f"kNN gain over random init: {gain:+.2f} points")
        protocol = (res.get("pretrained", {}).get("linear") or {}).get("protocol")
        if protocol:
            lines.append(
                f"linear probe: eval/protocol={protocol} on cached centre-crop features; "
                "'best' = best test accuracy over the probe's epochs"
            )
    lines += [
        f"run folder:  {outcome.run_dir}" + (" (results.md, report.png)" if done else ""),
        f"TensorBoard: tensorboard --logdir {Path(outcome.run_dir) / 'tensorboard'} --host 127.0.0.1",
        "Dashboard:   "
        + (
            f"{outcome.dashboard} (while a cluster runs; see README 'Ray job submit')"
            if outcome.dashboard
            else "start a head with platform/local/ray-head.sh start"
        ),
    ]
    return "\n".join(lines)


# Expected ends of a run: message prefix and exit code (the first matching class wins).
STOPS: dict[type[Exception], tuple[str, int]] = {
    RunStoppedError: ("run stopped: ", 3),
    RunFileError: ("error: ", 2),
    RunTerminatedError: ("", RunTerminatedError.exit_code),
    RunInterruptedError: ("", RunInterruptedError.exit_code),
}


def main_with_errors(cfg: dict[str, Any]) -> int:
    """Run :func:`pretrain` and print the table.

    Config errors (exit 2), stopped runs (3) and runs stopped by SIGINT (130) or SIGTERM (143)
    print one message each.
    """
    return run_command(lambda: results_table(pretrain(cfg), cfg), STOPS)
