"""The epoch loop around a :class:`~pipelines.training.pretrainer.Pretrainer`, inside a Ray Train worker.

The data epoch, skipping the batches a mid-epoch checkpoint already trained on, progress lines,
checkpoints and reports, the kNN monitor, and stopping on a non-finite loss or on too many bad
images. Resume lives in :mod:`~pipelines.training.resume`, the end-of-run judgement in
:mod:`~pipelines.training.final_eval`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from pipelines.core import checkpoints as ckpt
from pipelines.core.run_files import keep_probes, write_stop
from pipelines.core.run_log import RunLog, progress_line, say
from pipelines.data.monitor import find_monitor
from pipelines.evaluation.judge import Judge
from pipelines.evaluation.linear import final_numbers
from pipelines.evaluation.report import write_results
from pipelines.training.final_eval import final_evaluation, node_threads, open_judge
from pipelines.training.live import LiveMetrics
from pipelines.training.pretrainer import Pretrainer, agree
from pipelines.training.resume import record_placement_group, record_process, restore


class _Window:
    """Running sums over the steps since the last log line (and over the epoch)."""

    def __init__(self) -> None:
        self.steps, self.wait, self.total, self.images, self.loss = 0, 0.0, 0.0, 0, 0.0

    def add(self, wait: float, total: float, images: int, loss: float) -> None:
        self.steps += 1
        self.wait, self.total, self.images, self.loss = (
            self.wait + wait,
            self.total + total,
            self.images + images,
            self.loss + loss,
        )

    def summary(self) -> dict[str, float]:
        n = max(1, self.steps)
        return {
            "loss/mean": self.loss / n,
            "throughput/images_per_s": self.images / max(1e-9, self.total),
            "data/wait_fraction": self.wait / max(1e-9, self.total),
            "time/step_s": self.total / n,
        }


class Session:
    """Runs :class:`Pretrainer` over the epochs with Ray Train's dataset shards, checkpoints and reports."""

    def __init__(self, trainer: Pretrainer, train_api: Any) -> None:
        """``train_api`` is the ``ray.train`` module (passed in so this module never imports Ray)."""
        self.t, self.api = trainer, train_api
        self.cfg, self.run = trainer.cfg, trainer.run
        self.rank0 = trainer.rank == 0
        self.last_checkpoint: str | None = None
        self.log: RunLog | None = None
        self.monitor = None
        self.judge: Judge | None = None
        self.final_features: tuple[torch.Tensor, ...] | None = None  # the last epoch's monitor pass
        self.live: LiveMetrics | None = None

    # ------------------------------------------------------------------ helpers
    def _print(self, text: str) -> None:
        if self.rank0:
            say(text)

    def _barrier(self) -> None:
        if self.t.world > 1:
            dist.barrier()

    def _workers_here(self) -> int:
        """Training workers on this node (their threads are rank 0's while it judges alone)."""
        return int(self.api.get_context().get_local_world_size())

    def _set_data_epoch(self, epoch: int) -> None:
        """Tell the data pipeline which epoch's crops to draw (rank 0), then wait for everyone."""
        import ray

        if self.rank0 and self.monitor is not None:
            ray.get(self.monitor.set_epoch.remote(epoch))
        self._barrier()

    def _bad_images(self) -> dict[str, Any]:
        import ray

        if self.monitor is None:
            return {"good": 0, "bad": 0, "bad_fraction": 0.0, "max_bad_fraction": 1.0, "bad_files": []}
        return ray.get(self.monitor.snapshot.remote())

    def _too_many_bad(self) -> dict[str, Any] | None:
        """Rank 0's verdict on the bad-image share, agreed by every rank.

        Returns:
            ``None`` to go on; otherwise, on every rank, what to stop with (rank 0's snapshot, an
            empty dict elsewhere): a rank that went on would wait in the next step's all-reduce
            for ever.
        """
        snap = self._bad_images() if self.rank0 else None
        if snap is not None and self.live:
            self.live.update({"data/bad_images": snap["bad"]})
        over = bool(
            snap and snap["good"] + snap["bad"] >= 100 and snap["bad_fraction"] > snap["max_bad_fraction"]
        )
        return (snap or {}) if agree(over) else None

    def _checkpoint(self, metrics: dict[str, Any]) -> None:
        """Every rank reports; rank 0 attaches a complete checkpoint of finite weights."""
        name = f"checkpoint_e{self.t.epoch:04d}_s{self.t.step:08d}"
        with tempfile.TemporaryDirectory() as tmp:
            attached = None
            if self.rank0:
                if ckpt.all_finite(self.t.framework):
                    ckpt.write_checkpoint(tmp, self.t.state(), self.t.framework.backbone.state_dict())
                    attached = self.api.Checkpoint.from_directory(tmp)
                else:
                    say(f"WARNING: weights are not finite at step {self.t.step}; no checkpoint written")
            self.api.report(
                {**metrics, "epoch": self.t.epoch, "step": self.t.step},
                checkpoint=attached,
                checkpoint_dir_name=name,
            )
            if attached is not None:
                self.last_checkpoint = f"{self.run['storage']}/{self.run['name']}/{name}"
                if self.log:
                    self.log.flush()

    def _stop(self, reason: str, **details: Any) -> None:
        if self.rank0:
            path = write_stop(
                self.run["dir"],
                reason,
                step=self.t.step,
                epoch=self.t.epoch,
                last_good_checkpoint=self.last_checkpoint,
                **details,
            )
            say(f"STOPPED: {reason} (details in {path})")
            if self.log:
                self.log.close()

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Train from the restored state to the last epoch (or ``trainer.stop_at_epoch``)."""
        t, tr = self.t, self.cfg["trainer"]
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-pass execution banners
        self.last_checkpoint = restore(t, self.api)
        record_process(t)
        if self.rank0:
            self.log = RunLog(self.run["dir"], resume_step=t.step)
            self.live = LiveMetrics(self.run["name"])
            record_placement_group(self.run["dir"])
        self.monitor = find_monitor(self.run["name"])
        epochs, spe = int(tr["epochs"]), int(self.run["steps_per_epoch"])
        stop_at = int(tr.get("stop_at_epoch") or epochs)
        total, batch = epochs * spe, int(self.run["per_worker_batch"])
        log_every = max(1, int(tr["log_every_steps"]))
        every = int(tr.get("checkpoint_every_steps") or 0)
        knn_every = int(self.cfg["eval"].get("knn_every_epochs") or 0)
        shard = self.api.get_dataset_shard("train")
        for epoch in range(t.epoch, stop_at):
            self._set_data_epoch(epoch)
            skip, window, epoch_window = t.step_in_epoch, _Window(), _Window()
            tic = time.perf_counter()
            for i, batch_data in enumerate(
                shard.iter_torch_batches(
                    batch_size=batch, drop_last=True, prefetch_batches=int(tr["prefetch_batches"])
                )
            ):
                got = time.perf_counter()
                if i < skip or i >= spe:  # already trained on before the checkpoint / past the plan
                    tic = time.perf_counter()
                    continue
                lr = t.set_schedule(spe)
                views, local = t.prepare_batch(batch_data)
                loss, terms, finite = t.forward_backward(views, local)
                if not finite:
                    return self._stop(
                        f"non-finite loss at step {t.step} (epoch {epoch + 1})",
                        loss=float(loss),
                        terms={k: float(v) for k, v in terms.items()},
                    )
                t.optimizer_step()
                done = time.perf_counter()
                for w in (window, epoch_window):
                    w.add(got - tic, done - tic, batch * t.world, float(loss))
                if t.step % log_every == 0:
                    self._log_step(epoch, epochs, total, lr, loss, terms, window)
                    window = _Window()
                    snap = self._too_many_bad()
                    if snap is not None:
                        return self._stop("too many bad images", bad_images=snap)
                if every and t.step % every == 0:
                    self._checkpoint({"loss": float(loss), "lr": lr})
                tic = time.perf_counter()
            t.epoch, t.step_in_epoch = epoch + 1, 0
            metrics = self._epoch_metrics(epoch, epoch_window, knn_every)
            snap = self._too_many_bad()
            if snap is not None:
                return self._stop("too many bad images", bad_images=snap)
            self._checkpoint(metrics)
        if t.epoch >= epochs and self.rank0:
            self.judge = self.judge or open_judge(t, self.api)
            with node_threads(self._workers_here()) as threads:
                results = final_evaluation(
                    t, self.judge, self.last_checkpoint, self._bad_images(), self.final_features
                )
            results["threads"] = threads
            if self.log:
                for who in ("pretrained", "random_init"):
                    judged = results.get(who, {})
                    values = {"knn_top1": judged.get("knn_top1"), **final_numbers(judged.get("linear"))}
                    self.log.scalars(
                        t.step, {f"final/{who}/{k}": v for k, v in values.items() if v is not None}
                    )
                self.log.flush()
            results = keep_probes(self.run["dir"], results)
            write_results(self.run["dir"], results, f"run {self.run['name']}: {results['objective']}", spe)
        if self.log:
            self.log.close()

    def _log_step(
        self,
        epoch: int,
        epochs: int,
        total: int,
        lr: float,
        loss: torch.Tensor,
        terms: dict[str, torch.Tensor],
        window: _Window,
    ) -> None:
        diagnostics = self.t.diagnostics()  # on every rank: it may gather across ranks
        if not self.rank0:
            return
        s = window.summary()
        views = int(self.run["num_views"]) + int(self.run.get("local_crops") or 0)
        say(
            progress_line(
                epoch,
                epochs,
                self.t.step,
                total,
                float(loss),
                s["throughput/images_per_s"],
                views,
                s["data/wait_fraction"],
                s["time/step_s"],
            )
        )
        if self.log:
            values = {
                "loss/total": float(loss),
                **{f"loss/{k}": float(v) for k, v in terms.items()},
                "lr": lr,
                "throughput/images_per_s": s["throughput/images_per_s"],
                "throughput/views_per_s": s["throughput/images_per_s"] * views,
                "data/wait_fraction": s["data/wait_fraction"],
                **diagnostics,
            }
            if hasattr(self.t.framework, "momentum"):
                values["momentum"] = self.t.framework.momentum
            self.log.scalars(self.t.step, values, epoch=epoch)
        if self.live:
            self.live.update(
                {
                    "loss/total": float(loss),
                    "throughput/images_per_s": s["throughput/images_per_s"],
                    "throughput/views_per_s": s["throughput/images_per_s"] * views,
                    "data/wait_fraction": s["data/wait_fraction"],
                }
            )

    def _epoch_metrics(self, epoch: int, window: _Window, knn_every: int) -> dict[str, Any]:
        metrics: dict[str, Any] = dict(window.summary())
        if self.rank0:
            snap = self._bad_images()
            metrics["data/bad_images"] = snap["bad"]
            if knn_every and (epoch + 1) % knn_every == 0:
                t0 = time.perf_counter()
                judge = self.judge = self.judge or open_judge(self.t, self.api)
                with node_threads(self._workers_here()):
                    feats = judge.features(self.t.framework.backbone)
                    metrics["knn/top1"] = judge.knn(feats)[0]
                if epoch + 1 == int(self.cfg["trainer"]["epochs"]):
                    self.final_features = feats  # the weights the final evaluation judges next
                self._print(
                    f"epoch {epoch + 1}: kNN top-1 {metrics['knn/top1']:.2f}% "
                    f"({time.perf_counter() - t0:.0f}s)"
                )
            if self.live:
                self.live.update(metrics)
            if self.log:
                self.log.scalars(
                    self.t.step,
                    {
                        f"epoch/{k.replace('/', '_')}": v
                        for k, v in metrics.items()
                        if isinstance(v, int | float) and math.isfinite(v)
                    },
                    epoch=epoch,
                )
        return metrics
