"""Checking a resolved pretraining config before any cluster time is spent.

:func:`check_config` collects every problem it finds (not just the first) and raises one
:class:`ConfigError` whose lines each name the key and the fix. :func:`plan` derives the numbers
the run needs (views per image, per-worker batch, learning rate) from a valid config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import objectives
from pipelines.data.recipes import RECIPES, view_recipes

OPTIMIZERS = ("sgd", "lars", "adamw")
SCHEDULES = ("step", "cosine")
# settings a resumed run may change; any other difference from the saved config is refused
RESUMABLE_CHANGES = (
    "trainer.num_workers",
    "trainer.use_gpu",
    "trainer.resources_per_worker",
    "trainer.max_failures",
    "trainer.storage_shared",
    "trainer.log_every_steps",
    "trainer.stop_at_epoch",
    "trainer.checkpoint_every_steps",
    "trainer.num_to_keep",
    "trainer.prefetch_batches",
    "trainer.debug_nan_at_step",
    "eval",
    "ray",
    "dataset.root",
)


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem, one per line."""


def run_command(
    action: Callable[[], str], stops: dict[type[Exception], tuple[str, int]] | None = None
) -> int:
    """Run a command's ``action`` and print the text it returns; expected failures print one message.

    Args:
        action: does the work and returns what to print.
        stops: more expected exception types, each with its message prefix and exit code.

    Returns:
        0, 2 for a :class:`ConfigError` (``config error:`` and the problem, one line each when
        there are several) or a ``stops`` code.
        An error raised inside a Ray task is never one of these: it propagates with its traceback.
    """
    handled: dict[type[Exception], tuple[str, int]] = {ConfigError: ("config error: ", 2), **(stops or {})}
    try:
        text = action()
    except tuple(handled) as err:
        if any(c.__name__ == "RayTaskError" for c in type(err).__mro__):
            raise  # raised inside a Ray task: a fault to see whole (with its traceback), not bad input
        prefix, code = next(v for k, v in handled.items() if isinstance(err, k))
        print(f"{prefix}{err}", file=sys.stderr, flush=True)
        return code
    print(text, flush=True)
    return 0


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


def recipes_for(augment: dict[str, Any], num_views: int) -> list[Any]:
    """The view recipes of the ``augment`` config group for ``num_views`` global views."""
    crop_min = augment.get("crop_min")
    return view_recipes(
        augment["name"],
        num_views,
        int(augment.get("local_crops") or 0),
        None if crop_min is None else float(crop_min),
        augment.get("size"),
    )


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in str(path)


NETWORK_FILESYSTEMS = (
    "nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p",
    # FUSE mounts of shared storage (local FUSE ones such as fuseblk or fuse-overlayfs are not)
    "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.ceph-fuse", "fuse.glusterfs",
    "fuse.rclone", "fuse.mountpoint-s3", "fuse.goofys", "fuse.alluxio-fuse",
)  # fmt: skip


def on_network_filesystem(path: str, mounts: str = "/proc/mounts") -> bool:
    """Whether ``path`` lies on a network file system (NFS, CIFS, Ceph, Lustre, s3fs, gcsfuse, ...).

    The mount point is the longest one in ``mounts`` that holds the path.
    """
    target = os.path.realpath(os.path.expanduser(path))
    best, kind = "", ""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind in NETWORK_FILESYSTEMS


def check_shared_storage(trainer: dict[str, Any], alive_nodes: int) -> None:
    """Refuse a local ``trainer.storage_path`` on a cluster of several nodes.

    Each node would keep its own checkpoints, and a restart on another node would find none.

    Raises:
        ConfigError: naming the key and the ways out.
    """
    storage = str(trainer.get("storage_path") or "")
    if alive_nodes <= 1 or is_uri(storage) or trainer.get("storage_shared"):
        return
    if on_network_filesystem(storage):
        return
    raise ConfigError(
        f"trainer.storage_path={storage} is a local folder, but the cluster has {alive_nodes} nodes: "
        "each node would keep its own checkpoints and a restart elsewhere would find none. Use storage "
        "every node shares: trainer.storage_path=s3://<bucket>/<prefix> (or gs://), or an NFS mount "
        "seen at the same path on every node; if this folder is shared already (a network mount this "
        "check cannot see), say so with trainer.storage_shared=true"
    )


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _positive_int(errors: list[str], cfg: dict[str, Any], key: str, minimum: int = 1) -> int | None:
    value = _get(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        errors.append(f"{key}={value!r}: must be an integer >= {minimum}")
        return None
    return value


def _check_dataset(errors: list[str], ds: dict[str, Any]) -> None:
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
        from pipelines.models.build import check_combination

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
    views = 2 if aug["name"] == "imagenet_mocov3" else (k + 1 if isinstance(k, int) and k >= 1 else 2)
    try:
        recipes = recipes_for(aug, views)
    except ValueError as err:
        errors.append(f"augment: {err}")
        return
    if aug["name"] == "imagenet_mocov3" and isinstance(k, int) and k != 1:
        errors.append(
            f"objective.K={k}: augment=imagenet_mocov3 makes 2 global views (K=1); "
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
    from pipelines.evaluation.protocols import from_config

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
    many, few = ev.get("many_shot_above", 100), ev.get("few_shot_below", 20)
    if not (isinstance(many, int) and isinstance(few, int) and 0 <= few <= many):
        errors.append(
            f"eval.few_shot_below={few!r} and eval.many_shot_above={many!r}: need integers with "
            "0 <= few_shot_below <= many_shot_above"
        )


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
    _check_dataset(errors, cfg["dataset"])
    _check_objective(errors, cfg)
    _check_views(errors, cfg)
    _check_trainer(errors, cfg)
    check_eval(errors, cfg["eval"])
    if errors:
        raise ConfigError("\n".join(errors))
    tr, aug = cfg["trainer"], cfg["augment"]
    views = 2 if aug["name"] == "imagenet_mocov3" else int(cfg["objective"]["K"]) + 1
    batch = int(tr["batch_size"])
    return Plan(
        num_views=views,
        local_crops=int(aug.get("local_crops") or 0),
        per_worker_batch=batch // int(tr["num_workers"]),
        lr=float(tr["optimizer"]["lr_per_256"]) * batch / 256,
    )


def resolve_paths(cfg: dict[str, Any], project_root: Path) -> dict[str, Any]:
    """Make ``dataset.root`` and ``trainer.storage_path`` absolute (workers run elsewhere).

    A relative path is taken from the current folder when it exists there, else from the project
    root (so the bundled sample is found under ``ray job submit`` too). ``~`` is expanded.
    """
    out = {**cfg, "dataset": dict(cfg["dataset"]), "trainer": dict(cfg["trainer"])}
    for group, key in (("dataset", "root"), ("trainer", "storage_path")):
        value = out[group].get(key)
        if not value or is_uri(str(value)):
            continue
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute():
            here = Path.cwd() / path
            path = here if here.exists() or key == "storage_path" else project_root / path
        out[group][key] = str(path.resolve())
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, except the resumable ones."""
    changes = []
    for key in sorted(set(saved) | set(new)):
        dotted = f"{prefix}{key}"
        if any(dotted == r or dotted.startswith(r + ".") for r in RESUMABLE_CHANGES):
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, dotted + ".")
        elif a != b:
            changes.append(f"{dotted}: {a!r} -> {b!r}")
    return changes
