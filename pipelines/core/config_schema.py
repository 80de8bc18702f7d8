"""The typed schema of every config group: each default lives here, once.

Each group's YAML files start from their group's ``schema`` (``defaults: [schema, _self_]``) and
set only what differs, so a key the schema does not know, or a value of the wrong type, fails
when Hydra composes the config, with the key's full name. :func:`register` puts the schemas in
Hydra's ConfigStore; every entry point and compose helper calls it before composing.

The values checked here are types; what a value means (a known objective, a batch divisible by
the workers, ...) is checked by :func:`pipelines.config.checks.check_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipelines.core.limits import MAX_PIXELS

SCHEMA = "schema"  # the name of each group's schema entry in the ConfigStore


# ------------------------------------------------------------------ dataset
@dataclass
class ImbalanceConfig:
    """How the training split is made imbalanced (or rebalanced); ``none`` keeps it as it is."""

    rule: str = "none"  # none | cacr_cifar10_linear | cacr_cifar100_exp | cacr_cifar10_exp | ... | step
    ratio: float | None = None  # largest / smallest class, for exponential and step
    mu: float = 0.5  # fraction of minority classes, for step
    order: str | None = None  # cacr | ldam; null: the rule's own (cacr rules: cacr, seed 2021)
    seed: int | None = None
    balanced: bool = False  # class-balanced resampling of what is kept


@dataclass
class DatasetConfig:
    """A dataset: its source, splits, imbalance view and bad-image tolerance."""

    name: str = MISSING  # the source: shards | cifar10 | stl10 | imagenet1k | webvision | ...
    root: str | None = None  # required: the dataset's folder, file or URI
    options: dict[str, Any] = field(default_factory=dict)  # source options (e.g. variant, devkit)
    train_split: str = "train"
    eval_split: str = "test"
    num_classes: int | None = None  # null: from the shards; set: the shards must have that many
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)
    max_bad_fraction: float = 0.01  # stop the run when more of the images read than this are bad
    max_pixels: int = MAX_PIXELS  # larger images are bad (decompression bombs)
    mix_row_groups: int = 4  # training reads: rows of this many row groups mixed, new order each epoch
    max_train_images: int | None = None  # train on a fixed class-stratified sample of N images


# ------------------------------------------------------------------ model, objective, framework, views
@dataclass
class HeadConfig:
    """An MLP head (projector or predictor)."""

    layers: int = 2
    hidden: int = 512  # 0: no hidden layer
    out: int = 128
    batch_norm: bool = True  # BatchNorm after the hidden layers
    last_batch_norm: bool = False  # BatchNorm (no affine) after the output layer (MoCo-v3)
    output_bias: bool = True  # the output layer's bias when no BatchNorm follows it (MoCo-v3 heads: none)


@dataclass
class ModelConfig:
    """The backbone and its heads."""

    name: str = MISSING  # small_alexnet | resnet18 | resnet50 | vit_s16 | vit_b16
    image_size: int = 32
    stem: str = "imagenet"  # cifar: 3x3 conv1 and no max-pool (32-px inputs)
    width: float = 1.0
    norm: str = "batch"  # batch | none
    zero_init_residual: bool = False
    sync_bn: bool = False  # SyncBatchNorm across workers (GPU only)
    projector: HeadConfig = field(default_factory=HeadConfig)
    # MoCo-v3 needs one: a head with HeadConfig's keys, checked when it is built. Untyped, because
    # OmegaConf 2.3 cannot merge a mapping into a typed node that is null (model.predictor={...})
    predictor: Any = None


@dataclass
class ObjectiveConfig:
    """The objective: a registry name of :mod:`objectives`, K, and its constructor's arguments."""

    name: str = MISSING
    K: int = 1  # positives per image: K + 1 views
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameworkConfig:
    """How views become the objective's inputs: in-batch, MoCo-v2 queue, or MoCo-v3."""

    name: str = MISSING  # inbatch | moco_v2 | moco_v3
    forward: str = "per_view"  # per_view: a pass per view, BN statistics per view (official) | joint
    gather_negatives: bool = True  # in-batch negatives from every worker; false: each worker's own batch
    queue_size: int = 65_536  # moco_v2: a multiple of trainer.batch_size
    momentum: float = 0.999  # the momentum encoder's EMA rate (MoCo-v3 ResNet-50 0.996, ViT 0.99)
    shuffle_bn: bool = True  # moco_v2: keys with BatchNorm over a random mix of every worker's images
    momentum_cosine: bool = True  # moco_v3: raise the momentum to 1 with a half cosine


@dataclass
class AugmentConfig:
    """The view recipe (``pipelines.data.recipes``) and the normalisation statistics."""

    name: str = MISSING  # cifar | stl10 | imagenet_moco_v2 | imagenet_moco_v3
    crop_min: float | None = None  # smallest crop area of the global views (null: the recipe's own)
    size: int | None = None  # side of the global views in pixels (null: the recipe's); set model.image_size
    local_crops: int = 0  # imagenet_moco_v3: extra small crops per image
    mean_std: str = "imagenet"  # cifar10 | cifar10_exact | cifar100 | stl10 | imagenet (the official values)


# ------------------------------------------------------------------ trainer
@dataclass
class OptimizerConfig:
    """The pretraining optimiser; the learning rate scales linearly with the global batch."""

    name: str = "sgd"  # sgd | lars | adamw
    lr_per_256: float = 0.12  # lr = lr_per_256 * batch_size / 256
    momentum: float = 0.9  # sgd, lars
    weight_decay: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, evaluated every step."""

    name: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [155, 170, 185])  # epochs (step)
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class TrainerConfig:
    """Ray Train settings, optimiser, schedule and checkpoints (paper small-scale defaults)."""

    name: str = "${experiment_name}"  # the run's name: re-running with the same name resumes it
    storage_path: str = "${oc.env:CACR_STORAGE,${oc.env:HOME}/cacr-runs}"  # folder or s3:// gs:// URI
    storage_shared: bool = False  # true: storage_path is a folder every node sees (multi-node)
    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 0.5})
    epochs: int = 200
    stop_at_epoch: int | None = None  # end this invocation after that epoch (the plan keeps `epochs`)
    batch_size: int = 128  # global: images per step over all workers
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 (with a GradScaler) | fp32
    channels_last: Any = "auto"  # auto (GPU; CPU for conv nets) | true | false
    checkpoint_every_steps: int = 0  # 0: at the end of every epoch only
    num_to_keep: int = 2
    max_failures: int = 0  # worker failures survived (restarts from the latest checkpoint)
    log_every_steps: int = 20
    prefetch_batches: int = 2
    read_task_cpus: float = 1.0  # CPUs each Ray Data read task reserves (searches: tune.data_cpus_per_trial)
    preemption_watcher: bool = False  # Ray Train's node-drain logger (one more actor per run): unused here
    seed: int = 0
    debug_nan_at_step: int | None = None  # test hook: poison the batch at this step


# ------------------------------------------------------------------ evaluation
@dataclass
class ProtocolConfig:
    """A linear-probe protocol (``eval/protocol``): optimiser, schedule, crops."""

    name: str = MISSING
    optimizer: str = "sgd"  # sgd | adam
    lr: float | None = None  # the rate at batch_size (or lr_per_256)
    lr_per_256: float | None = None
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    schedule: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    init_std: float | None = None  # null: PyTorch's default nn.Linear initialisation
    standardize: bool = False  # true: features standardised with the train split's statistics first
    augment: bool = True  # false: centre-crop features computed once and cached (much faster)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    val_fraction: float = 0.0  # > 0: hold out this share of train (per class), select the epoch on it


@dataclass
class EvalConfig:
    """The kNN monitor, the final evaluation of the encoder, and the linear probe."""

    protocol: ProtocolConfig = MISSING  # eval/protocol=small_scale | moco_v2 | moco_v3
    knn_every_epochs: int = 1  # 0: never during training
    knn_k: int = 200  # the kNN monitor's k (and the k of knn_top1 in results)
    knn_report_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])  # final results too
    knn_temperature: float = 0.07
    knn_bank_size: int = 50_000  # training images (centre crops) in the kNN bank and the final probe
    # evaluation images: shorter side resized to size / centre_crop, centre size x size kept (null:
    # the augment recipe's own, as the official test transforms: cifar 1, stl10 64/70, imagenet 224/256)
    centre_crop: float | None = None
    final_linear_probe: bool = True  # at the end of pretraining: eval.protocol on cached features
    random_init_baseline: bool = True  # also judge the same encoder at random init (BN recomputed)
    cache_mb: int = 1024  # evaluation images kept in memory on rank 0 between passes
    many_shot_above: int = 100  # many-shot classes: more pretraining images than this
    few_shot_below: int = 20  # few-shot classes: fewer than this; medium-shot: the rest
    use_gpu: bool = False  # pipelines/linear_probe.py: run the probe's worker on a GPU


GROUPS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "framework": FrameworkConfig,
    "augment": AugmentConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "eval/protocol": ProtocolConfig,
}


def register() -> None:
    """Store every group's schema in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for group, node in GROUPS.items():
        store.store(group=group, name=SCHEMA, node=node)


def with_defaults(group: str | type, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """A plain dict of ``group`` (a group name or a schema class) with the schema's defaults under ``values``.

    ``values`` are checked the same way as at compose time (unknown keys, types).

    For configs built in code rather than composed by Hydra (benchmarks, tests, a saved config
    of an older run), so that code never carries a second copy of a default.
    """
    schema = GROUPS[group] if isinstance(group, str) else group
    merged = OmegaConf.merge(OmegaConf.structured(schema), values or {})
    return OmegaConf.to_container(merged, resolve=False, throw_on_missing=False)  # type: ignore[return-value]


def _schema(group: str | type, prefix: str) -> tuple[type, str, dict[str, Any]]:
    """``(schema class, dotted prefix of its keys, its type hints)`` of a group name or schema class."""
    schema = GROUPS[group] if isinstance(group, str) else group
    return schema, prefix or (f"{group}." if isinstance(group, str) else ""), typing.get_type_hints(schema)


def unknown_keys(group: str | type, values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of ``values`` that ``group``'s schema does not have (nested schemas followed).

    Hydra refuses such a key on the command line, but ``+group.key=value`` adds it anyway: a
    misspelt ``+trainer.batchsize=64`` would otherwise be ignored while the run trains at the
    default batch size.
    """
    schema, prefix, hints = _schema(group, prefix)
    names = {f.name for f in dataclasses.fields(schema)}
    out = []
    for key, value in values.items():
        if key not in names:
            out.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            out += unknown_keys(hints[key], value, f"{prefix}{key}.")
    return out


def schema_keys(group: str | type, prefix: str = "") -> list[str]:
    """Every dotted key of ``group``'s schema (nested schemas followed), e.g. ``trainer.epochs``."""
    schema, prefix, hints = _schema(group, prefix)
    out = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints.get(f.name)):
            out += schema_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def close_key(key: str) -> str | None:
    """The schema key a misspelt dotted ``key`` most likely meant (``trainer.epoch`` -> ``trainer.epochs``).

    ``None`` when ``key`` is a schema key, its group is not a schema group, or nothing is close.
    """
    group = key.split(".", 1)[0]
    if group not in GROUPS or "." not in key:
        return None
    known = schema_keys(group)
    if key in known or any(key.startswith(k + ".") or k.startswith(key + ".") for k in known):
        return None  # a setting, a key inside a mapping setting (objective.hparams.t_neg), or a group
    same_depth = [k for k in known if k.count(".") == key.count(".")]
    found = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.75)
    return found[0] if found else None
