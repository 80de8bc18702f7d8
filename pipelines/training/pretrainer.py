"""One worker's training state and steps; :mod:`pipelines.training.session` runs the epochs.

Each worker builds the framework, wraps its online encoder in DDP (gloo on CPU, NCCL on GPU),
restores the latest complete checkpoint if Ray hands one over, and streams its share of the
``train`` dataset. Per step: uint8 views to the device, photometric augmentation there, forward
under bf16 autocast on GPU (or fp16 with a GradScaler), a finite-loss check agreed by all
ranks, backward, optimizer step, queue update. Rank 0 logs (console, TensorBoard,
``metrics.jsonl``), runs the kNN monitor and writes checkpoints; every rank calls
``ray.train.report`` at the same points.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from objectives.distributed import world
from pipelines.core import checkpoints as ckpt
from pipelines.core.schedules import learning_rate
from pipelines.data.augment import Photometric
from pipelines.data.recipes import recipes_for, seed_for
from pipelines.models.build import build_framework
from pipelines.training.optim import build_optimizer, set_learning_rate


def channels_last_for(setting: Any, model: str, on_gpu: bool) -> bool:
    """Whether to train in the channels-last layout: ``trainer.channels_last`` (true / false / auto).

    ``auto`` is on for GPUs and, on CPUs, for the convolutional backbones (SmallAlexNet, ResNets),
    whose oneDNN kernels run faster that way (SmallAlexNet's step on one thread: about 0.7x the
    time, ResNet-18 0.9x; docs/benchmarks.md); ViTs gain nothing from it on a CPU.
    """
    if setting == "auto":
        return on_gpu or not model.startswith("vit")
    return setting is True


class Pretrainer:
    """One worker's training state and steps.

    Args:
        cfg: the resolved config (plain dict).
        run: what the driver derived: ``dir`` (run folder for logs), ``name``, ``steps_per_epoch``,
            ``num_classes``, ``num_views``, ``per_worker_batch``, ``lr``, ``mean``, ``std``.
        device: where to train (default: Ray Train's device, else the CPU).
    """

    def __init__(self, cfg: dict[str, Any], run: dict[str, Any], device: torch.device | None = None) -> None:
        self.cfg, self.run = cfg, run
        self.rank, self.world = world()
        self.device = device or torch.device("cpu")
        tr = cfg["trainer"]
        self.seed = int(tr["seed"])
        self.on_gpu = self.device.type == "cuda"
        precision = tr["precision"]
        self.bf16 = precision == "bf16" or (precision == "auto" and self.on_gpu)
        self.fp16 = precision == "fp16"  # with a GradScaler (GPUs without bf16, e.g. the paper's V100s)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fp16)
        self.channels_last = channels_last_for(tr["channels_last"], cfg["model"]["name"], self.on_gpu)
        torch.manual_seed(self.seed)
        self.framework = build_framework(cfg, distributed=self.world > 1, seed=self.seed).to(self.device)
        if cfg["model"]["sync_bn"] and self.world > 1:  # the momentum encoder too, as the official code
            convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
            self.framework.online = convert(self.framework.online)
            if hasattr(self.framework, "momentum_encoder"):
                self.framework.momentum_encoder = convert(self.framework.momentum_encoder)
        if self.channels_last:
            self.framework.use_channels_last()
        if self.world > 1:  # Ray Train's DDP wrap (device_ids on GPU); one worker trains unwrapped
            import ray.train.torch

            online = ray.train.torch.prepare_model(self.framework.online, move_to_device=False)
            self.framework.use_online(online)
        self.optimizer = build_optimizer(self.framework.online, tr["optimizer"], float(run["lr"]))
        recipes = recipes_for(cfg["augment"], int(run["num_views"]))
        self.photometric = Photometric(recipes, tuple(run["mean"]), tuple(run["std"])).to(self.device)
        self.mean = torch.tensor(run["mean"], device=self.device)
        self.std = torch.tensor(run["std"], device=self.device)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """The full training state for a checkpoint."""
        return {
            "model": self.framework.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "rng": ckpt.rng_state(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (weights, queue, optimizer, counters)."""
        self.framework.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.step_in_epoch = int(state["step_in_epoch"])
        torch.set_rng_state(state["rng"]["torch"])
        if state.get("scaler"):  # fp16 runs (older checkpoints have none)
            self.scaler.load_state_dict(state["scaler"])

    # ---------------------------------------------------------------- one step
    def prepare_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """uint8 views on the device -> photometrically augmented, normalised float views."""
        gen = torch.Generator(device=self.device).manual_seed(
            seed_for(self.seed, self.step, "photo", self.rank)
        )
        views = batch["views"].to(self.device, non_blocking=True)
        local = batch.get("local_views")
        local = local.to(self.device, non_blocking=True) if local is not None else None
        with torch.no_grad():
            views, local = self.photometric(views, gen, local)
        debug = self.cfg["trainer"].get("debug_nan_at_step")
        if debug is not None and self.step == int(debug):
            views = torch.full_like(views, float("nan"))  # test hook: a poisoned batch
        return views, local

    def forward_backward(
        self, views: Tensor, local: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], bool]:
        """Loss, its terms, and whether every rank's loss is finite; gradients only when it is.

        Args:
            views: normalised float views ``[B, V, 3, S, S]`` of this rank.
            local: MoCo-v3 local crops ``[B, L, 3, s, s]`` or ``None``.

        Returns:
            ``(loss, terms, finite)``: ``loss`` and ``terms`` averaged over ranks (detached).
        """
        torch.manual_seed(seed_for(self.seed, self.step, "model", self.rank))
        half = torch.float16 if self.fp16 else torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=half, enabled=self.bf16 or self.fp16):
            out = self.framework(views, local)
        names = sorted(out.terms)
        stats = torch.stack([out.loss.detach().float()] + [out.terms[n].detach().float() for n in names])
        bad = (~torch.isfinite(stats)).any().float().view(1)
        stats = torch.cat([torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0), bad])
        if self.world > 1:
            dist.all_reduce(stats)
        finite = bool(stats[-1] == 0)
        raw = torch.stack([out.loss.detach().float()] + [out.terms[n].detach().float() for n in names])
        values = stats[:-1] / self.world if finite else raw
        if finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()  # unscaled when fp16 is off
        return values[0], {n: values[i + 1] for i, n in enumerate(names)}, finite

    def optimizer_step(self) -> None:
        """Apply the gradients (fp16: skipped when they overflowed), update the queue and counters."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.framework.after_step()
        self.step += 1
        self.step_in_epoch += 1

    def set_schedule(self, steps_per_epoch: int) -> float:
        """Set this step's learning rate (and MoCo-v3 momentum); returns the learning rate."""
        tr = self.cfg["trainer"]
        lr = learning_rate(
            self.step, steps_per_epoch, int(tr["epochs"]), float(self.run["lr"]), tr["schedule"]
        )
        set_learning_rate(self.optimizer, lr)
        self.framework.set_progress(self.step / max(1, steps_per_epoch * int(tr["epochs"])))
        return lr

    def diagnostics(self) -> dict[str, float]:
        """CACR weight entropies / largest weights from the last forward (empty for other objectives)."""
        obj = self.framework.objective
        if not hasattr(obj, "diagnostics") or not self.framework.last_inputs:
            return {}
        with torch.no_grad():
            return {f"weights/{k}": float(v) for k, v in obj.diagnostics(*self.framework.last_inputs).items()}


def agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    _, size = world()
    if size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)
