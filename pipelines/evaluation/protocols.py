"""Linear-probe protocols (``eval.protocol``): the optimiser, schedule, epochs and crops of each.

Three ship as config files in ``configs/eval/protocol/`` (see ``docs`` there and the spec,
section 5.4): ``small_scale`` (the paper's small-scale probe: Adam 1e-3, betas (0.5, 0.999),
batch 128, 100 epochs, x0.2 at 60 and 80), ``moco_v2`` (SGD lr 30, momentum 0.9, wd 0, batch 256,
100 epochs, x0.1 at 60 and 80, fc initialised N(0, 0.01)) and ``moco_v3`` (SGD momentum 0.9,
wd 0, lr 0.1 x batch / 256, batch 1024, cosine over 90 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf.errors import ValidationError

from pipelines.core.config_schema import with_defaults
from pipelines.core.schedules import learning_rate

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Protocol:
    """One linear-probe protocol (all fields from ``eval.protocol``).

    Attributes:
        name: ``small_scale``, ``moco_v2``, ``moco_v3`` or a user's own.
        optimizer: ``adam`` or ``sgd``.
        lr: the learning rate at ``batch_size`` (for ``lr_per_256`` configs: scaled already).
        batch_size: training rows per step.
        epochs: passes over the training split.
        schedule: ``step`` (x ``gamma`` at each milestone epoch) or ``cosine`` (per epoch, to 0).
        milestones: epochs where a ``step`` schedule multiplies the rate by ``gamma``.
        gamma: the step factor.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        betas: Adam betas.
        init_std: ``N(0, init_std)`` weights and zero bias for the linear layer; ``None``: PyTorch's.
        standardize: standardise features with the training split's mean and deviation first.
        augment: train on random-resized crops with flips (recomputing features each epoch);
            ``False`` computes features once from centre crops and caches them.
        crop_scale: the random-resized crop's area range when ``augment``.
        val_fraction: hold out this share of the training split (per class) and select the
            epoch on it; 0 selects nothing (final and best-over-epochs test accuracy only).
    """

    name: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    momentum: float
    weight_decay: float
    betas: tuple[float, float]
    init_std: float | None
    standardize: bool
    augment: bool
    crop_scale: tuple[float, float]
    val_fraction: float

    def lr_at(self, epoch: int) -> float:
        """The learning rate during 0-based ``epoch`` (the pretraining schedules, stepped per epoch)."""
        schedule = {"name": self.schedule, "milestones": list(self.milestones), "gamma": self.gamma}
        return learning_rate(epoch, 1, self.epochs, self.lr, schedule)

    def cached(self) -> Protocol:
        """The same protocol on features computed once (no augmentation)."""
        return Protocol(**{**self.__dict__, "augment": False})


def _fail(key: str, message: str) -> None:
    raise ValueError(f"eval.protocol.{key}: {message}")


def from_config(cfg: dict[str, Any]) -> Protocol:
    """Build and check a :class:`Protocol` from the ``eval.protocol`` mapping.

    ``lr_per_256`` (instead of ``lr``) scales the rate linearly with ``batch_size``. Keys left
    out take the schema's defaults (:class:`pipelines.core.config_schema.ProtocolConfig`).

    Raises:
        ValueError: naming the key and what it must be.
    """
    if not isinstance(cfg, dict) or not cfg.get("name"):
        raise ValueError("eval.protocol is missing: pick one with eval/protocol=small_scale|moco_v2|moco_v3")
    try:
        cfg = with_defaults("eval/protocol", cfg)
    except ValidationError as err:
        _fail(str(err.full_key), str(err.msg))
    batch, epochs = cfg.get("batch_size"), cfg.get("epochs")
    if not (isinstance(batch, int) and batch >= 1):
        _fail("batch_size", f"must be a positive int, got {batch!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        _fail("epochs", f"must be a positive int, got {epochs!r}")
    if cfg.get("optimizer") not in OPTIMIZERS:
        _fail("optimizer", f"choose one of {', '.join(OPTIMIZERS)}, got {cfg.get('optimizer')!r}")
    if cfg["schedule"] not in SCHEDULES:
        _fail("schedule", f"choose one of {', '.join(SCHEDULES)}, got {cfg.get('schedule')!r}")
    if cfg.get("lr") is not None:
        lr = cfg["lr"]
    elif cfg.get("lr_per_256") is not None:
        lr = float(cfg["lr_per_256"]) * batch / 256
    else:
        lr = None
    if not (isinstance(lr, int | float) and lr > 0):
        _fail("lr", f"set lr (or lr_per_256) to a positive number, got {cfg.get('lr')!r}")
    milestones = tuple(int(m) for m in cfg.get("milestones") or ())
    if any(not 0 < m < epochs for m in milestones):
        _fail("milestones", f"every milestone must be between 1 and epochs-1={epochs - 1}, got {milestones}")
    val = float(cfg["val_fraction"])
    if not 0.0 <= val < 1.0:
        _fail("val_fraction", f"must be in [0, 1), got {val}")
    scale = tuple(float(s) for s in cfg["crop_scale"])
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        _fail("crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")
    init_std = cfg.get("init_std")
    return Protocol(
        name=str(cfg["name"]),
        optimizer=str(cfg["optimizer"]),
        lr=float(lr),
        batch_size=batch,
        epochs=epochs,
        schedule=str(cfg["schedule"]),
        milestones=milestones,
        gamma=float(cfg["gamma"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]),
        betas=tuple(float(b) for b in cfg["betas"]),
        init_std=None if init_std is None else float(init_std),
        standardize=bool(cfg["standardize"]),
        augment=bool(cfg["augment"]),
        crop_scale=scale,
        val_fraction=val,
    )
