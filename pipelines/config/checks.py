"""Checking a resolved pretraining config before any cluster time is spent.

:func:`check_config` collects every problem it finds (not just the first) and raises one
:class:`ConfigError` whose lines each name the key and the fix. :func:`check_config` also derives the numbers
the run needs (views per image, per-worker batch, learning rate) from a valid config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import objectives
from pipelines.core.config_schema import close_key, unknown_keys
from pipelines.core.errors import ConfigError
from pipelines.core.storage import is_uri
from pipelines.data.recipes import MEAN_STD, RECIPES, recipes_for
from pipelines.evaluation.protocols import from_config
from pipelines.models.backbones import check_backbone
from pipelines.models.build import check_combination

OPTIMIZERS = ("sgd", "lars", "adamw")

SCHEDULES = ("step", "cosine")
FORWARDS = ("per_view", "joint")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Plan:
    """Numbers derived from a valid config.

    Attributes:
        num_views: global views per image (``K + 1``; MoCo-v3: 2).
        local_crops: MoCo-v3 local crops per image.
        per_worker_batch: images per step on each worker.
        lr: the peak learning rate (``lr_per_256 · batch / 256``).
    """

    num_views: int
    local_crops: int
    per_worker_batch: int
    lr: float


def _positive_int(errors: list[str], cfg: dict[str, Any], key: str, minimum: int = 1) -> int | None:
    value = OmegaConf.select(OmegaConf.create(cfg), key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        errors.append(f"{key}={value!r}: must be an integer >= {minimum}")
        return None
    return value


def _optional_count(errors: list[str], value: Any, key: str, meaning: str) -> None:
    """``value`` must be null (``meaning``) or an integer >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        errors.append(f"{key}={value!r}: must be an integer >= 1, or null ({meaning})")


def _check_dataset(errors: list[str], ds: dict[str, Any]) -> None:
    _optional_count(errors, ds.get("max_train_images"), "dataset.max_train_images", "every image")
    root = ds.get("root")
    if not root:
        errors.append(
            f"dataset.root is not set: add dataset.root=<folder or URI of the {ds.get('name')} shards> "
            "(run pipelines/prepare.py first for raw datasets)"
        )
    elif not is_uri(root) and not Path(root).exists():
        errors.append(f"dataset.root={root}: no such file or folder; point it at the dataset's shards")


def _check_objective(errors: list[str], cfg: dict[str, Any]) -> None:
    obj, fw = cfg["objective"], cfg["framework"]
    k = _positive_int(errors, cfg, "objective.K")
    try:
        objectives.build(obj["name"], **(obj.get("hparams") or {}))
    except ValueError as err:
        errors.append(f"objective.hparams: {err}")
    if k is not None:
        try:
            check_combination(fw["name"], obj["name"], k + 1)
        except ValueError as err:
            errors.append(f"framework.name / objective.name: {err}")


def _check_views(errors: list[str], cfg: dict[str, Any]) -> None:
    aug, model, obj = cfg["augment"], cfg["model"], cfg["objective"]
    if aug.get("name") not in RECIPES:
        errors.append(f"augment.name={aug.get('name')!r}: choose one of {', '.join(RECIPES)}")
        return
    k = obj.get("K")
    views = 2 if aug["name"] == "imagenet_moco_v3" else (k + 1 if isinstance(k, int) and k >= 1 else 2)
    try:
        recipes = recipes_for(aug, views)
    except ValueError as err:
        errors.append(f"augment: {err}")
        return
    if aug.get("mean_std") not in MEAN_STD:
        errors.append(f"augment.mean_std={aug.get('mean_std')!r}: choose one of {', '.join(MEAN_STD)}")
    if aug["name"] == "imagenet_moco_v3" and isinstance(k, int) and k != 1:
        errors.append(
            f"objective.K={k}: augment=imagenet_moco_v3 makes 2 global views (K=1); "
            "add positives with augment.local_crops instead"
        )
    if int(model.get("image_size") or 0) != recipes[0].size:
        errors.append(
            f"model.image_size={model.get('image_size')} but augment={aug['name']} makes "
            f"{recipes[0].size}-px views: set model.image_size={recipes[0].size}"
        )


def _check_trainer(errors: list[str], cfg: dict[str, Any]) -> None:
    tr, fw, model = cfg["trainer"], cfg["framework"], cfg["model"]
    workers = _positive_int(errors, cfg, "trainer.num_workers")
    batch = _positive_int(errors, cfg, "trainer.batch_size", minimum=2)
    epochs = _positive_int(errors, cfg, "trainer.epochs")
    if workers and batch:
        if batch % workers:
            errors.append(
                f"trainer.batch_size={batch} (the global batch) is not divisible by "
                f"trainer.num_workers={workers}: use a multiple, e.g. {batch - batch % workers or workers}"
            )
        elif batch // workers < 2:
            errors.append(f"trainer.batch_size={batch} gives {batch // workers} image per worker: need >= 2")
    if fw.get("name") == "moco_v2" and batch:
        queue = fw.get("queue_size")
        if not isinstance(queue, int) or queue < batch or queue % batch:
            errors.append(
                f"framework.queue_size={queue} must be a positive multiple of the global batch "
                f"trainer.batch_size={batch} (e.g. {batch * max(1, (queue or batch) // batch)})"
            )
    if tr.get("precision") not in PRECISIONS:
        errors.append(f"trainer.precision={tr.get('precision')!r}: choose one of {', '.join(PRECISIONS)}")
    layout = tr.get("channels_last")
    if not (isinstance(layout, bool) or layout == "auto"):  # 1 == True: a bool, not any value equal to one
        errors.append(f"trainer.channels_last={layout!r}: choose true, false or auto")
    if fw.get("forward") not in FORWARDS:
        errors.append(f"framework.forward={fw.get('forward')!r}: choose one of {', '.join(FORWARDS)}")
    if fw.get("name") == "moco_v3" and not model.get("predictor"):
        errors.append("model.predictor is not set: framework=moco_v3 needs a predictor head")
    stop = tr.get("stop_at_epoch")
    if stop is not None and epochs and not (isinstance(stop, int) and 1 <= stop <= epochs):
        errors.append(f"trainer.stop_at_epoch={stop!r}: must be between 1 and trainer.epochs={epochs}")
    opt, sched = tr.get("optimizer") or {}, tr.get("schedule") or {}
    if opt.get("name") not in OPTIMIZERS:
        errors.append(f"trainer.optimizer.name={opt.get('name')!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not (isinstance(opt.get("lr_per_256"), int | float) and opt["lr_per_256"] > 0):
        errors.append(f"trainer.optimizer.lr_per_256={opt.get('lr_per_256')!r}: must be > 0")
    if sched.get("name") not in SCHEDULES:
        errors.append(f"trainer.schedule.name={sched.get('name')!r}: choose one of {', '.join(SCHEDULES)}")
    if epochs and any(m >= epochs for m in sched.get("milestones") or []):
        errors.append(
            f"trainer.schedule.milestones={sched.get('milestones')}: every milestone must be "
            f"< trainer.epochs={epochs}"
        )
    width = model.get("width")
    if not (isinstance(width, int | float) and not isinstance(width, bool) and 0 < width < float("inf")):
        errors.append(f"model.width={width!r}: must be a number > 0 (1.0 is the full width)")
    _positive_int(errors, cfg, "trainer.num_to_keep")
    if model.get("sync_bn") and not tr.get("use_gpu"):
        errors.append(
            "model.sync_bn=true needs GPUs (SyncBatchNorm has no CPU kernel): set "
            "trainer.use_gpu=true or model.sync_bn=false"
        )
    storage = str(tr.get("storage_path") or "")
    if not storage:
        errors.append("trainer.storage_path is not set: a folder or URI where runs are kept")
    if not tr.get("name"):
        errors.append("trainer.name is not set: the run's name (re-using a name resumes that run)")
    elif "/" in str(tr["name"]) or str(tr["name"]).startswith("."):
        errors.append(f"trainer.name={tr['name']!r}: a plain name without '/' or a leading '.'")


def check_eval(errors: list[str], ev: dict[str, Any]) -> None:
    """Append the problems of the ``eval`` group (probe protocol, kNN, shot thresholds) to ``errors``."""
    try:
        from_config(ev.get("protocol"))
    except ValueError as err:
        errors.append(str(err))
    for key in ("knn_k", "knn_temperature"):
        if not (isinstance(ev.get(key), int | float) and ev[key] > 0):
            errors.append(f"eval.{key}={ev.get(key)!r}: must be > 0")
    ks = ev.get("knn_report_k")
    if ks is not None and not (
        isinstance(ks, list | tuple) and all(isinstance(k, int) and k > 0 for k in ks)
    ):
        errors.append(f"eval.knn_report_k={ks!r}: must be a list of positive integers, e.g. [10,20,100,200]")
    many, few = ev.get("many_shot_above"), ev.get("few_shot_below")
    if not (isinstance(many, int) and isinstance(few, int) and 0 <= few <= many):
        errors.append(
            f"eval.few_shot_below={few!r} and eval.many_shot_above={many!r}: need integers with "
            "0 <= few_shot_below <= many_shot_above"
        )
    crop = ev.get("centre_crop")
    if crop is not None and not (isinstance(crop, int | float) and 0 < crop <= 1):
        errors.append(
            f"eval.centre_crop={crop!r}: the evaluation centre crop's share of the resized shorter side, "
            "in (0, 1]; null: the augment recipe's own"
        )


def _check_backbone(errors: list[str], cfg: dict[str, Any]) -> None:
    """What the backbone builder would refuse on the workers (``model.image_size``, ``model.width``...)."""
    model = cfg["model"]
    width = model.get("width")
    if not isinstance(width, int | float) or isinstance(width, bool):
        return  # named by the trainer checks
    try:
        check_backbone(
            str(model.get("name")),
            image_size=model.get("image_size"),
            stem=str(model.get("stem")),
            width=float(width),
            norm=str(model.get("norm")),
        )
    except ValueError as err:
        hint = ""
        if str(err).startswith("model.width") and cfg.get("experiment_name") == "demo":
            hint = " (the default experiment, demo, sets model.width=0.125 for its SmallAlexNet)"
        errors.append(f"{err}{hint}")


def check_config(cfg: dict[str, Any]) -> Plan:
    """Check a resolved config and derive its :class:`Plan`.

    Args:
        cfg: the resolved config as a plain dict.

    Returns:
        The derived numbers.

    Raises:
        ConfigError: listing every problem found, each naming its key and the fix.
    """
    errors: list[str] = []
    for group in ("dataset", "objective", "framework", "model", "augment", "trainer", "eval"):
        if not isinstance(cfg.get(group), dict):
            errors.append(f"{group} is missing: pick one with {group}=<option>")
    if errors:
        raise ConfigError("\n".join(errors))
    for group in ("dataset", "objective", "framework", "model", "augment", "trainer", "eval"):
        errors += [
            f"{key} is not a setting (added with '+'? check its spelling"
            + (f": did you mean {meant}?" if (meant := close_key(key)) else "")
            + "; `python pipelines/pretrain.py --cfg job` lists every key)"
            for key in unknown_keys(group, cfg[group])
        ]
    _check_dataset(errors, cfg["dataset"])
    _check_objective(errors, cfg)
    _check_views(errors, cfg)
    _check_trainer(errors, cfg)
    _check_backbone(errors, cfg)
    check_eval(errors, cfg["eval"])
    if errors:
        raise ConfigError("\n".join(errors))
    tr, aug = cfg["trainer"], cfg["augment"]
    views = 2 if aug["name"] == "imagenet_moco_v3" else int(cfg["objective"]["K"]) + 1
    batch = int(tr["batch_size"])
    return Plan(
        num_views=views,
        local_crops=int(aug.get("local_crops") or 0),
        per_worker_batch=batch // int(tr["num_workers"]),
        lr=float(tr["optimizer"]["lr_per_256"]) * batch / 256,
    )


def worker_resources(trainer: dict[str, Any]) -> dict[str, float]:
    """What Ray Train reserves for each worker (``ScalingConfig``'s rule in Ray 2.60).

    No ``resources_per_worker``: 1 CPU, or with ``use_gpu`` 1 GPU and no CPU. Given: those
    (zeros dropped), plus 1 GPU with ``use_gpu`` when it names none.
    """
    given = {k: float(v) for k, v in dict(trainer.get("resources_per_worker") or {}).items() if v}
    if not trainer.get("resources_per_worker"):
        given = {"GPU": 1.0} if trainer.get("use_gpu") else {"CPU": 1.0}
    if trainer.get("use_gpu"):
        given.setdefault("GPU", 1.0)
    return given


def capacity_problem(trainer: dict[str, Any], cluster: dict[str, float]) -> str | None:
    """Why the cluster cannot hold one run's Train workers and a read task at once, or ``None``.

    A run needs ``num_workers`` x :func:`worker_resources` plus ``read_task_cpus`` for its Ray
    Data reads; short of that it waits for ever.

    Args:
        trainer: the ``trainer`` config group.
        cluster: ``ray.cluster_resources()``.
    """
    workers, per = int(trainer["num_workers"]), worker_resources(trainer)
    cpu, reads = per.get("CPU", 0.0), float(trainer["read_task_cpus"])
    need_cpu, have_cpu = workers * cpu + reads, float(cluster.get("CPU", 0.0))
    keys = "trainer.num_workers / trainer.resources_per_worker / trainer.read_task_cpus"
    if need_cpu > have_cpu + 1e-9:
        return (
            f"the run needs {need_cpu:g} CPUs at once ({workers} worker(s) x {cpu:g} + {reads:g} for its "
            f"data reads), but the cluster has {have_cpu:g}: lower {keys}"
        )
    need_gpu, have_gpu = workers * per.get("GPU", 0.0), float(cluster.get("GPU", 0.0))
    if need_gpu > have_gpu + 1e-9:
        return (
            f"the run needs {need_gpu:g} GPUs ({workers} worker(s) x {per['GPU']:g}), but the cluster "
            f"has {have_gpu:g}: lower trainer.num_workers, or run where the GPUs are"
        )
    return None
