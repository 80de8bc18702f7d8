"""The driver of ``pipelines/linear_probe.py``: judge a pretrained run's encoder on Ray.

Finds the checkpoint (a run folder's latest complete one, or the one named), rebuilds the run's
data (the whole train split and the held-out split as centre crops), and runs one Ray Train
worker (GPU if ``eval.use_gpu``) that loads ``backbone.pt`` with ``weights_only=True``, computes
kNN and the ``eval.protocol`` linear probe, and adds the result under ``linear_probes.<name>``
of the run's ``results.json`` (the protocol, with what differs from its shipped settings, the
dataset and the checkpoint when not the run's latest: :func:`pipelines.probe.setup.probe_key`),
rewriting ``results.md`` and ``report.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipelines.config.changes import migrate_saved
from pipelines.config.checks import check_eval
from pipelines.core import checkpoints as ckpt
from pipelines.core.errors import ConfigError, run_command
from pipelines.core.run_files import (
    CLASS_COUNTS,
    CONFIG_FILE,
    STOPPED,
    other_data_problem,
    read_results,
    read_run_file,
)
from pipelines.core.storage import is_uri
from pipelines.data.loader import open_training_source, training_datasets
from pipelines.data.recipes import MEAN_STD, eval_crop_for, recipes_for
from pipelines.evaluation.breakdown import is_imbalanced
from pipelines.evaluation.export import load_state
from pipelines.evaluation.judge import BatchCache, Judge
from pipelines.evaluation.protocols import from_config
from pipelines.evaluation.report import encoder_table, write_results
from pipelines.models.build import build_framework
from pipelines.probe.setup import check_backbone, judged_dataset, probe_eval, probe_key, protocol_changes
from pipelines.ray_session import connect, set_preemption_watcher


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint folder)`` for a run folder or a checkpoint folder.

    Raises:
        ConfigError: naming ``run=`` when the path is missing, not a run, or has no complete checkpoint.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(
            f"run={path}: no such folder; pass a run folder (<storage_path>/<name>) or a checkpoint"
        )
    if (p / ckpt.COMPLETE).exists():
        problem = ckpt.checkpoint_problem(p)
        if problem:
            raise ConfigError(f"run={path}: this checkpoint cannot be used ({problem}); pick another")
        return p.parent, p
    if not (p / "config.yaml").exists():
        raise ConfigError(
            f"run={path}: not a run folder (no config.yaml) nor a checkpoint (no COMPLETE marker)"
        )
    found, torn = ckpt.scan_checkpoints(str(p.parent), p.name)
    if not found:
        damaged = "".join(f"\n  {t.path}: {t.problem}" for t in torn if t.was_complete)
        if damaged:
            raise ConfigError(f"run={path}: every checkpoint of the run is damaged:{damaged}")
        stopped = p / STOPPED
        why = (
            f"it stopped before its first checkpoint ({read_run_file(stopped).get('reason')}; {stopped})"
            if stopped.exists()
            else "still training, or it failed before its first checkpoint"
        )
        raise ConfigError(f"run={path}: the run has no complete checkpoint yet ({why})")
    return p, Path(ckpt.newest(found).path)


def probe_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: load the backbone, judge it, write the run's results files."""
    import ray.train

    cfg, ev, info = config["cfg"], config["eval"], config["info"]
    device = ray.train.torch.get_device()
    seed = int(cfg["trainer"]["seed"])
    backbone = build_framework(cfg, seed=seed).backbone
    backbone.load_state_dict(load_state(info["weights"]), strict=True)
    backbone.to(device).eval()

    def open_stream(name: str) -> Any:
        return ray.train.get_dataset_shard(name).iter_torch_batches(batch_size=256, prefetch_batches=2)

    judge = Judge(
        BatchCache(open_stream, int(ev["cache_mb"]) * 2**20),
        len(info["classes"]),
        torch.tensor(info["mean"], device=device),
        torch.tensor(info["std"], device=device),
        device,
        info["train_counts"],
        ev,
        seed=seed,
    )
    protocol = from_config(ev["protocol"])
    t0, every = time.perf_counter(), max(1, protocol.epochs // 20)

    def progress(epoch: int, accs: dict[str, float]) -> None:
        if epoch % every and epoch != protocol.epochs:
            return
        spent = time.perf_counter() - t0
        shown = "  ".join(f"{k} {v:.2f}" for k, v in accs.items())
        eta = spent / epoch * (protocol.epochs - epoch)
        sys.stdout.write(f"probe epoch {epoch}/{protocol.epochs}  top-1 {shown}  ETA {eta:.0f}s\n")
        sys.stdout.flush()

    judged = judge.judge(backbone, protocol, progress)
    judged.update(checkpoint=info["checkpoint"], seconds=time.perf_counter() - t0)
    if info["weights_given"]:  # backbone=: another file than the checkpoint's own backbone.pt
        judged["weights"] = info["weights"]
    judged["judged_on"] = info["judged_on"]
    run_dir = Path(info["run_dir"])
    results = read_results(run_dir)
    if info["judged_on"]["other_dataset"]:  # its own classes: kept with it, out of the run's per-class tables
        judged.update(classes=info["classes"], train_counts=info["train_counts"])
    else:
        results.setdefault("classes", info["classes"])
        results.setdefault("train_counts", info["train_counts"])
    results.setdefault("linear_probes", {})[info["key"]] = judged
    obj = cfg["objective"]
    write_results(
        run_dir, results, f"run {cfg['trainer']['name']}: {obj['name']} (K={obj['K']})", info["spe"]
    )


def linear_probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the probe of ``cfg`` (the ``linear_probe`` config) and return the run's updated results.

    Raises:
        ConfigError: for a bad ``run=``, a bad ``eval`` group or a dataset that is not there.
    """
    if not cfg.get("run"):
        raise ConfigError("run is not set: add run=<run folder or checkpoint folder>")
    run_dir, checkpoint = find_checkpoint(cfg["run"])
    errors: list[str] = []
    run_cfg = migrate_saved(read_run_file(run_dir / CONFIG_FILE))
    read_results(run_dir)  # a damaged results.json is named now, not after the probe has run
    ev = probe_eval(run_cfg.get("eval"), cfg["eval"], list(cfg.get("overrides") or []))
    check_eval(errors, ev)
    if errors:
        raise ConfigError("\n".join(errors))
    dataset, other = judged_dataset(run_cfg["dataset"], cfg.get("eval_dataset"))
    if cfg.get("dataset_root") and not other:
        dataset["root"] = str(Path(cfg["dataset_root"]).expanduser().resolve())
    root = str(dataset.get("root") or "")
    if not is_uri(root) and not Path(root).exists():
        raise ConfigError(
            f"the run's dataset.root={root} does not exist: pass dataset_root=<where it is now>"
        )
    weights = _weights_file(cfg.get("backbone"))
    check_backbone(run_cfg, checkpoint, weights)

    from ray.data import ExecutionOptions
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not other:  # the run's own data: its classes are compared with the run's below
        dataset = {**dataset, "num_classes": None}
    try:  # no shards there, a split they lack: named now, before Ray starts
        source = open_training_source(dataset, group="eval_dataset" if other else "dataset")
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err
    connect((cfg.get("ray") or {}).get("address"))
    aug = run_cfg["augment"]
    recipes = recipes_for(aug, 2)
    data = training_datasets(
        dataset,
        recipes,
        eval_size=recipes[0].size,
        seed=int(run_cfg["trainer"]["seed"]),
        whole_bank=True,
        eval_crop=eval_crop_for(aug, ev),
        source=source,
    )
    if not other:  # the run's own dataset, perhaps moved: it must still hold the same images
        problem = other_data_problem(run_dir, list(data.classes), list(data.train_counts))
        if problem:
            raise ConfigError(
                f"dataset.root={dataset['root']} holds other data than run {run_dir.name} trained on: "
                f"{problem}. To judge the encoder on another dataset pass eval_dataset.root=<its shards>"
            )
    marker = read_run_file(checkpoint / ckpt.COMPLETE)
    mean, std = MEAN_STD[aug["mean_std"]]
    counts_file = run_dir / CLASS_COUNTS
    counts = (
        read_run_file(counts_file)["counts"]
        if counts_file.exists() and not other
        else list(data.train_counts)
    )
    protocol = from_config(ev["protocol"])
    existing = _existing_probes(run_dir)
    named_checkpoint = Path(cfg["run"]).expanduser().resolve() != run_dir  # run=<a checkpoint folder>
    info = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "classes": list(data.classes),
        "train_counts": [int(c) for c in counts],
        "mean": list(mean),
        "std": list(std),
        "spe": max(1, int(marker["step"]) // max(1, int(marker["epoch"]))),
        "key": probe_key(protocol.name, dataset, other, existing, protocol_changes(ev["protocol"]))
        + (f" of {weights.name}" if weights else "")
        + (_checkpoint_note(run_dir, checkpoint) if named_checkpoint else ""),
        "weights": str(weights or checkpoint / ckpt.BACKBONE),
        "weights_given": weights is not None,
        "judged_on": {
            "root": str(dataset["root"]),
            "train_split": dataset["train_split"],
            "eval_split": dataset["eval_split"],
            "classes": len(data.classes),
            "other_dataset": other,
        },
    }
    how = "random-resized crops" if protocol.augment else "cached centre-crop features"
    print(
        f"linear probe {protocol.name} ({protocol.epochs} epochs, {how}) of {info['weights']}\n  on "
        f"{dataset['root']} ({dataset['train_split']} -> {dataset['eval_split']}, "
        f"{len(data.classes)} classes)\n  results.json entry: {info['key']!r}"
        + (" (replaces the earlier probe with these settings)" if info["key"] in existing else ""),
        flush=True,
    )
    gpu = bool(ev.get("use_gpu"))
    datasets = {k: v for k, v in data.datasets.items() if k in ("bank", "eval")}
    set_preemption_watcher(False)  # one worker judging for minutes: nothing to drain-log
    TorchTrainer(
        probe_loop_per_worker,
        train_loop_config={"cfg": run_cfg, "eval": ev, "info": info},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpu),
        run_config=RunConfig(name=f"linear_probe_{protocol.name}", storage_path=str(run_dir / "probe-runs")),
        datasets=datasets,
        dataset_config=DataConfig(  # same row order every pass: the val hold-out is by position
            datasets_to_split=[],
            execution_options={k: ExecutionOptions(preserve_order=True) for k in datasets},
        ),
    ).fit()
    return {**read_results(run_dir), "probe_key": info["key"]}


def _checkpoint_note(run_dir: Path, checkpoint: Path) -> str:
    """`` at <checkpoint>`` for a probe of an earlier checkpoint than the run's latest (its own entry)."""
    try:
        latest = find_checkpoint(str(run_dir))[1]
    except ConfigError:  # ConfigError is a ValueError: no usable latest one to compare with
        return ""
    return "" if checkpoint.resolve() == latest.resolve() else f" at {checkpoint.name}"


def _weights_file(path: str | None) -> Path | None:
    """The ``backbone=`` file as an absolute path (None: the checkpoint's own ``backbone.pt``).

    Raises:
        ConfigError: naming ``backbone=`` when the file does not exist.
    """
    if not path:
        return None
    weights = Path(path).expanduser().resolve()
    if not weights.is_file():
        raise ConfigError(f"backbone={path}: no such file; pass a backbone.pt or an official checkpoint")
    return weights


def _existing_probes(run_dir: Path) -> dict[str, Any]:
    return read_results(run_dir).get("linear_probes") or {}


def baseline_label(probe: dict[str, Any] | None, baseline: dict[str, Any] | None) -> str:
    """The run's random-init row in the probe's table, saying how it was probed when that differs."""
    label = "random init (from the run's own evaluation"
    how = [(p or {}).get(k) for p in (probe, baseline) for k in ("protocol", "epochs", "augment")]
    if baseline and how[:3] != how[3:]:
        name, epochs, augment = how[3:]
        on = "random-resized crops" if augment else "cached centre-crop features"
        label += f": probed by {name}, {epochs} epochs on {on}"
    return label + ")"


def probe_table(results: dict[str, Any], protocol: str, run_dir: str) -> str:
    """The short table printed at the end of ``linear_probe.py``."""
    judged = results["linear_probes"][protocol]
    other = (judged.get("judged_on") or {}).get("other_dataset")
    rows = [(f"pretrained, {protocol} probe", judged)]
    if "random_init" in results and not other:  # the run's baseline was judged on the run's own data
        rows.append(
            (
                baseline_label(judged.get("linear"), results["random_init"].get("linear")),
                results["random_init"],
            )
        )
    lines = encoder_table(rows)
    shots = (judged.get("breakdown") or {}).get("shots")

    if shots and is_imbalanced(judged.get("train_counts") or results.get("train_counts") or []):
        lines.append(
            "many / medium / few-shot top-1: "
            + " / ".join("-" if v["top1"] is None else f"{v['top1']:.2f}" for v in shots.values())
            + " ("
            + ", ".join(f"{k} {v['rule']}" for k, v in shots.items())
            + ")"
        )
    lines.append(f"results: {Path(run_dir) / 'results.md'}  figure: {Path(run_dir) / 'report.png'}")
    return "\n".join(lines)


def main_with_errors(cfg: dict[str, Any]) -> int:
    """Run :func:`linear_probe` and print its table; a config or input problem exits 2 with one message."""

    def probe_and_table() -> str:
        results = linear_probe(cfg)
        run_dir, _ = find_checkpoint(cfg["run"])
        return probe_table(results, results.pop("probe_key"), str(run_dir))

    input_errors = {ValueError: ("error: ", 2), FileNotFoundError: ("error: ", 2)}  # from the data layer
    return run_command(probe_and_table, input_errors)
