"""GPU check: MoCo-v2 ResNet-50 pretraining speed, CACR K=4 against InfoNCE, and the data wait.

    python benchmarks/gpu_pretrain.py            # on a GPU machine: 224 px, bf16 + channels_last (< 8 min)
    python benchmarks/gpu_pretrain.py --tiny     # anywhere: the same code path at a toy size (CPU check)

Part 1 (synthetic uint8 views already on the device, so the data pipeline is out of the picture):
images/s and views/s of one training worker (photometric augmentation on the device, forward,
backward, SGD step, queue update) for ``cacr_moco_v2`` with K = 4 (5 views) and ``infonce_queue``
(K = 1, 2 views), measured in the same run; the median of several timed windows after a warm-up.
Part 2 (the real pipeline): a short ``pipelines.training.run.pretrain`` run of the CACR setting on
generated ImageNet-sized JPEG shards (about 500x375) through Ray Data and Ray Train; its
images/s and fraction of step time spent waiting for data come from the run's ``metrics.jsonl``.
Writes ``benchmarks/results/gpu_pretrain-<card>.json`` (the card's name from ``nvidia-smi``/torch).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time

import pyarrow.parquet as pq
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
# benchmarks/objectives.py would shadow the objectives package: the repo root, not this folder.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))


def compose(*overrides: str) -> dict:
    """The resolved config of the ImageNet-100 MoCo-v2 CACR preset with ``overrides``."""
    from pipelines.search.trial import compose_pretrain  # registers the typed schemas first

    return compose_pretrain(
        str(ROOT / "configs"), ["experiment=imagenet100_moco_v2_cacr", *overrides], str(ROOT)
    )


def synthetic(cfg: dict, device: torch.device, steps: int, windows: int) -> dict:
    """Steps per second of one worker on views already on the device."""
    from pipelines.config.checks import check_config
    from pipelines.training.pretrainer import Pretrainer

    plan = check_config(cfg)
    run = {
        "lr": plan.lr,
        "num_views": plan.num_views,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    trainer = Pretrainer(cfg, run, device=device)
    size = int(cfg["model"]["image_size"])
    gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randint(
        0,
        256,
        (plan.per_worker_batch, plan.num_views, 3, size, size),
        generator=gen,
        device=device,
        dtype=torch.uint8,
    )

    def step() -> None:
        x, local = trainer.prepare_batch({"views": views})
        _, _, finite = trainer.forward_backward(x, local)
        assert finite, "non-finite loss in the benchmark"
        trainer.optimizer_step()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    times = []
    for _ in range(windows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / steps)
    per_step = statistics.median(times)
    images = plan.per_worker_batch / per_step
    return {
        "objective": cfg["objective"]["name"],
        "K": cfg["objective"]["K"],
        "batch": plan.per_worker_batch,
        "views": plan.num_views,
        "seconds_per_step": per_step,
        "images_per_s": images,
        "views_per_s": images * plan.num_views,
        "windows": times,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def make_shards(folder: pathlib.Path, n: int) -> None:
    """``n`` generated ImageNet-sized JPEGs as train shards plus a small test split (shards layout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "benchmarks" / "data.py")
    bench_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_data)
    imagenet_like = bench_data.imagenet_like

    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("test", max(64, n // 10))):
        src = pathlib.Path(imagenet_like(count, folder, seed=1 if split == "test" else 0))
        src.rename(folder / f"{split}-00000-of-00001.parquet")
    (folder / "classes.txt").write_text("".join(f"class{i}\n" for i in range(10)))


def pipeline(cfg_overrides: list[str], shards: pathlib.Path, storage: pathlib.Path) -> dict:
    """A short real run through Ray Data and Ray Train; throughput and data wait from metrics.jsonl."""
    from pipelines.training.run import pretrain

    cfg = compose(
        *cfg_overrides,
        f"dataset.root={shards}",
        f"trainer.storage_path={storage}",
        "trainer.name=gpu-bench",
        "trainer.epochs=1",
        "eval.knn_every_epochs=0",
        "eval.final_linear_probe=false",
        "eval.random_init_baseline=false",
        "eval.knn_bank_size=256",
        "dataset.num_classes=10",
        "dataset.eval_split=test",
        "trainer.log_every_steps=2",
    )
    t0 = time.perf_counter()
    outcome = pretrain(cfg)
    rows = [
        json.loads(line)
        for line in (pathlib.Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "throughput/images_per_s" in r and "loss/total" in r][
        1:
    ]  # skip the first window
    steps = steps or [r for r in rows if "throughput/images_per_s" in r]
    return {
        "wall_s": time.perf_counter() - t0,
        "images_per_s": statistics.median(r["throughput/images_per_s"] for r in steps),
        "views_per_s": statistics.median(r["throughput/views_per_s"] for r in steps),
        "data_wait_fraction": statistics.median(r["data/wait_fraction"] for r in steps),
        "windows": len(steps),
    }


def card_name(device: torch.device) -> str:
    """``NVIDIA-H100-80GB-HBM3`` or ``cpu``: a file-name-safe name of the device."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")


def main() -> None:
    """Run both parts and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the code path on a CPU")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        size, batch, steps, windows, images = 64, 4, 2, 3, 96
        common = [
            "model.image_size=64",
            "model=resnet18",
            "model.stem=imagenet",
            "trainer.use_gpu=false",
            "trainer.num_workers=1",
            f"trainer.batch_size={batch}",
            "framework.queue_size=64",
            "augment=stl10",
            "model.projector.hidden=64",
        ]
    else:
        size, batch, steps, windows, images = 224, 128, 10, 5, 6000
        common = [
            "trainer.use_gpu=true",
            "trainer.num_workers=1",
            f"trainer.batch_size={batch}",
            "framework.queue_size=65536",
            "trainer.precision=bf16",
            "trainer.channels_last=true",
            "trainer.resources_per_worker={CPU: 12}",
        ]
    tmp = tempfile.TemporaryDirectory()
    shards = pathlib.Path(tmp.name) / "shards"
    make_shards(shards, images)
    assert pq.ParquetFile(shards / "train-00000-of-00001.parquet").metadata.num_rows == images
    cacr = compose(*common, f"dataset.root={shards}")
    infonce = compose(*common, f"dataset.root={shards}", "objective=moco_infonce")
    print(f"device: {card_name(device)}; {size} px, batch {batch} per step", flush=True)
    result: dict = {"device": card_name(device), "tiny": args.tiny, "image_size": size, "batch": batch}
    t0 = time.perf_counter()
    result["synthetic"] = {
        "cacr_k4": synthetic(cacr, device, steps, windows),
        "infonce_k1": synthetic(infonce, device, steps, windows),
    }
    s = result["synthetic"]
    s["ratio_images_per_s_cacr_over_infonce"] = s["cacr_k4"]["images_per_s"] / s["infonce_k1"]["images_per_s"]
    s["ratio_views_per_s_cacr_over_infonce"] = s["cacr_k4"]["views_per_s"] / s["infonce_k1"]["views_per_s"]
    print(f"synthetic ({time.perf_counter() - t0:.0f}s):", flush=True)
    for name in ("cacr_k4", "infonce_k1"):
        r = s[name]
        print(f"  {name:10s} {r['images_per_s']:9.1f} img/s {r['views_per_s']:9.1f} views/s", flush=True)
    print(
        f"  CACR / InfoNCE: {s['ratio_images_per_s_cacr_over_infonce']:.2f}x images/s, "
        f"{s['ratio_views_per_s_cacr_over_infonce']:.2f}x views/s",
        flush=True,
    )
    with tmp:
        override = [c for c in common if not c.startswith("trainer.resources_per_worker")]
        if args.tiny:
            override.append("trainer.resources_per_worker={CPU: 0.5}")
        result["pipeline"] = pipeline(override, shards, pathlib.Path(tmp.name) / "runs")
    p = result["pipeline"]
    print(
        f"pipeline: {p['images_per_s']:.1f} img/s, {p['views_per_s']:.1f} views/s, "
        f"data wait {100 * p['data_wait_fraction']:.0f}% of step time",
        flush=True,
    )
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_pretrain-{result['device']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
