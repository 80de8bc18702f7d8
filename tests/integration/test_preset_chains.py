"""Every dataset family's paper preset, end to end: a byte-exact miniature of the raw files ->
``prepare`` (with the command in the preset's own header) -> ``pretrain experiment=<preset>`` ->
the preset's evaluation, at toy size.

Each run keeps the preset's framework, objective, augmentation recipe and evaluation protocol and
overrides only size knobs (batch, epochs, workers, training images, the class count of a miniature
with fewer classes, image size where the model allows it, widths of queues and banks, GPUs off).
All eight took 2 min 52 s here on 2 cores alone (15-30 s each, one shared Ray cluster), 5-7 min
beside the rest of ``make test``; the three slowest are marked ``slow`` (``pytest -m "not slow"``
skips them; ``make test`` and CI run them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipelines.config.checks import check_config
from pipelines.data.prepare import prepare_dataset
from pipelines.search.trial import compose_pretrain
from pipelines.training.run import pretrain
from tests.helpers import replicas
from tests.helpers.runs import jsonl

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)  # 15-30 s each here alone, up to 185 s under heavy load

TOY = [
    "trainer.epochs=1",
    "trainer.num_workers=1",
    "trainer.use_gpu=false",
    "trainer.resources_per_worker={CPU: 0.5}",
    "trainer.log_every_steps=1",
    "trainer.schedule.warmup_epochs=0",
    "model.sync_bn=false",
    "eval.use_gpu=false",
    "eval.knn_every_epochs=1",
    "eval.knn_bank_size=64",
    "eval.protocol.epochs=2",
    "eval.protocol.milestones=[1]",
    "eval.protocol.batch_size=16",
]
SMALL_IMAGES = ["augment.size=32", "model.image_size=32"]  # ImageNet recipes at 32 px
MOCO_V2 = ["framework.queue_size=16"]
FEW_CLASSES = ["dataset.num_classes=null"]  # a miniature with a few of the preset's 1,000 classes
ALEXNET = ["model.width=0.125", "trainer.schedule.milestones=[]"]  # the paper's steps: epochs 155-185


def header_prepare(preset: str) -> tuple[str, dict[str, str]]:
    """``dataset=`` and ``dataset.options.*`` of the ``prepare.py`` command in the preset's header."""
    text = (ROOT / "configs" / "experiment" / f"{preset}.yaml").read_text()
    command = next(x for x in text.splitlines() if x.startswith("#") and "pipelines/prepare.py" in x)
    dataset = re.search(r"\bdataset=(\S+)", command).group(1)
    options = dict(re.findall(r"\bdataset\.options\.(\w+)=(\S+)", command))
    return dataset, options


# preset -> (raw miniature, toy overrides, prepare splits or None for all)
CHAINS: dict[str, tuple[Callable[[Path], Any], list[str], list[str] | None]] = {
    "cifar10_cacr_k4": (replicas.cifar10, ["trainer.batch_size=8", "trainer.num_workers=2", *ALEXNET], None),
    "cifar100_imbalanced_cacr_k4": (  # 5 per class: the exponential rule keeps 5 or 1 in the top 20 classes
        partial(replicas.cifar100, train_per_class=5),
        ["trainer.batch_size=8", *ALEXNET],
        None,
    ),
    "stl10_cacr_k4": (replicas.stl10, ["trainer.batch_size=8", *ALEXNET], ["train+unlabeled", "test"]),
    "imagenet100_moco_v2_cacr": (
        replicas.imagenet100,
        ["trainer.batch_size=8", *SMALL_IMAGES, *MOCO_V2, "dataset.max_train_images=32"],
        None,
    ),
    "webvision_moco_v2_cacr": (
        replicas.webvision,
        ["trainer.batch_size=4", *SMALL_IMAGES, *MOCO_V2, *FEW_CLASSES],
        None,
    ),
    "imagenet22k_moco_v2_cacr": (
        replicas.imagenet22k,
        ["trainer.batch_size=8", *SMALL_IMAGES, *MOCO_V2, "dataset.max_train_images=32"],
        None,
    ),
    "imagenet1k_moco_v3_cacr_r50": (  # with two local crops (96/224 of 32 px)
        replicas.imagenet,
        ["trainer.batch_size=4", *SMALL_IMAGES, "augment.local_crops=2", *FEW_CLASSES],
        None,
    ),
    "imagenet1k_moco_v3_cacr_vitb": (
        replicas.imagenet,
        ["trainer.batch_size=4", *SMALL_IMAGES, *FEW_CLASSES],
        None,
    ),
}


SLOW = {"imagenet1k_moco_v3_cacr_vitb", "imagenet100_moco_v2_cacr", "imagenet22k_moco_v2_cacr"}  # 22-30 s


def chain_config(preset: str, shards: Path, storage: Path) -> dict[str, Any]:
    """The preset at toy size on ``shards``, runs kept under ``storage``."""
    overrides = [f"experiment={preset}", f"dataset.root={shards}", f"trainer.storage_path={storage}"]
    return compose_pretrain(str(ROOT / "configs"), [*overrides, *TOY, *CHAINS[preset][1]], str(ROOT))


def test_every_family_has_a_chain_and_every_header_names_a_prepare_command() -> None:
    families = {header_prepare(p)[0] for p in CHAINS}
    assert families >= {
        "cifar10",
        "cifar100",
        "stl10",
        "imagenet100",
        "webvision",
        "imagenet22k",
        "imagenet1k",
    }
    assert header_prepare("imagenet22k_moco_v2_cacr") == ("imagenet22k", {"variant": "21k_p"})  # has val


@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in CHAINS]
)
def test_the_preset_runs_from_raw_files_to_its_results(ray_cluster, tmp_path, preset) -> None:
    make_raw, _, splits = CHAINS[preset]
    make_raw(tmp_path / "raw")
    dataset, options = header_prepare(preset)
    raw = replicas_root(tmp_path / "raw", dataset)
    manifest = prepare_dataset(dataset, str(raw), str(tmp_path / "shards"), splits=splits, options=options)
    cfg = chain_config(preset, tmp_path / "shards", tmp_path / "runs")
    check_config(cfg)
    for split in (cfg["dataset"]["train_split"], cfg["dataset"]["eval_split"]):
        assert manifest["splits"][split]["rows"] > 0, split  # what the preset reads, prepare wrote

    out = pretrain(cfg)
    results = out.results
    assert (Path(out.run_dir) / "results.json").exists() and (Path(out.run_dir) / "results.md").exists()
    assert results["epochs"] == 1 and results["steps"] >= 1
    for encoder in ("pretrained", "random_init"):
        judged = results[encoder]
        assert 0.0 <= judged["knn_top1"] <= 100.0
        assert all(0.0 <= v <= 100.0 for v in judged["knn_top1_at_k"].values())
        linear = judged["linear"]
        assert linear["protocol"] == cfg["eval"]["protocol"]["name"] and 0.0 <= linear["final_top1"] <= 100.0
    losses = [r["loss/total"] for r in jsonl(Path(out.run_dir) / "metrics.jsonl") if "loss/total" in r]
    assert losses and all(math.isfinite(x) for x in losses)


def replicas_root(raw: Path, dataset: str) -> Path:
    """Where ``dataset=`` is pointed: the ImageNet-22K replica is one outer tar file."""
    return next(raw.glob("*.tar")) if dataset == "imagenet22k" else raw
