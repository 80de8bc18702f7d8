"""Ray Data pipeline vs torch DataLoaders: images/s, views/s, time to first batch, peak memory.

Every pipeline reads the same Parquet shards, decodes with the same guarded decoder (and the
same JPEG draft size) and draws K + 1 = 5 random-resized crops with flips, with 2 worker
processes (Ray: a 2-CPU local cluster; DataLoaders: ``num_workers=2``):

* ``torch_dataloader``: the usual DataLoader: a map-style dataset whose ``__getitem__`` decodes
  one image and applies ``torchvision.transforms.v2`` ``RandomResizedCrop`` (antialiased, on the
  uint8 tensor) and ``RandomHorizontalFlip`` once per view; default collate. The target's baseline.
* ``torch_dataloader_batched``: a DataLoader given this project's own per-batch functions
  (``decode_image`` and ``crop_views`` in its ``collate_fn``): the same work as the Ray tasks,
  so the gap to it is what Ray itself costs or saves.
* ``ray_data``: the training pipeline (``read_decode_view`` per row group, rows of 4 row groups
  mixed in a new order each epoch, blocks bounded in bytes) with this project's Ray Data
  scheduler settings (``pipelines/data/scheduling.py``).
* ``ray_data_stock``: the same pipeline with Ray's own scheduler settings.
* ``ray_data_spin_wait``: the same with the project's settings before the prompt wait (a 10 ms
  ``ray.wait`` timeout, metadata on Ray's thread), which kept workers busy by polling.
* ``ray_data_joined_blocks``: the same pipeline with Ray's default output block target (128 MiB),
  which joins a read task's pieces into one block (the pipeline emits each piece on its own).
* ``ray_data_two_tasks_per_core``: the same pipeline with read tasks of half a CPU each.
* ``machine_limit``: the same read, decode and crop functions in a tight loop in 2 forked
  processes, no framework (:mod:`benchmarks.machine_limit`): the ceiling every arm is a
  fraction of.

Scenarios: (a) the CIFAR-10 JPEG test shards (10,000 images) at 32 px, (b) 1,024 generated
ImageNet-sized JPEGs (500x375 and 375x500, row groups as ``prepare`` writes them: 8 MiB,
~70 photos) at 224 px, each at 1x and 10x
(the same shards listed ten times). The machine's speed drifts by 20 % or more over minutes,
so pipelines take turns: each round runs one epoch of every pipeline, and a ratio is the
median over rounds of the per-round ratio. Peak memory is the largest rise of the machine's
used memory: for Ray from before its cluster starts (its processes and object store count),
for a DataLoader from before each epoch (its workers start with the epoch). The object store is
2,500 MiB (Ray's default here would be 30 % of RAM, 7 GB): with 1,000 MiB, Ray Data's memory
budget let only one task of 256 photos (193 MB of 224-px views) run at a time, and one of the
two workers sat idle (186 img/s against 320-338 img/s).

    python benchmarks/data.py            # writes benchmarks/results/data.json (about 30 minutes)
    python benchmarks/data.py --scenarios imagenet_like_224px   # photos only: data-imagenet_like_224px.json
    python benchmarks/data.py --quick    # smaller, prints only
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks.*

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.machine_limit import limit_epoch, per_photo_ms  # noqa: E402
from pipelines.core.storage import Store  # noqa: E402
from pipelines.data import scheduling  # noqa: E402
from pipelines.data.augment import crop_views  # noqa: E402
from pipelines.data.decode import decode_image  # noqa: E402
from pipelines.data.read_tasks import OUTPUT_BLOCK_BYTES, ReadPlan, stream  # noqa: E402
from pipelines.data.recipes import view_recipes  # noqa: E402
from pipelines.data.shard_writer import parquet_bytes  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
MIX = 4  # row groups mixed per read, as dataset.mix_row_groups in the shipped configs
ROWS_PER_GROUP = 0  # photos' row-group rows (--photo-rows-per-group); 0: prepare's own rule
STORE_MB = 2500  # at 1,000 MiB Ray Data let one 224-px task (193 MB of views) run at a time


def used_memory() -> int:
    """Bytes in use on the machine (MemTotal - MemAvailable from /proc/meminfo)."""
    info = dict(line.split(":", 1) for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


class PeakMemory:
    """Samples the machine's used memory in a thread; ``peak`` is the largest rise over ``base``."""

    def __init__(self, base: int | None = None) -> None:
        self.base = used_memory() if base is None else base
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, used_memory() - self.base)
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ParquetRows(torch.utils.data.Dataset):
    """Rows of Parquet shards (image bytes and label), read one row at a time."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.index = [
            (f, i) for f, path in enumerate(files) for i in range(pq.ParquetFile(path).metadata.num_rows)
        ]
        self._cache: dict[int, pa.Table] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        f, row = self.index[i]
        if f not in self._cache:  # each worker process keeps the shard it is reading
            self._cache = {f: pq.read_table(self.files[f], columns=["image", "label"])}
        table = self._cache[f]
        return table["image"][row].as_py(), table["label"][row].as_py()


class TorchvisionViews(ParquetRows):
    """The usual per-image dataset: decode, then torchvision's crop and flip once per view."""

    def __init__(self, files: list[str], recipes, draft) -> None:
        import torchvision.transforms.v2 as T

        super().__init__(files)
        self.draft = draft
        self.views = [
            T.Compose(
                [
                    T.RandomResizedCrop(r.size, scale=r.scale, ratio=r.ratio, antialias=True),
                    T.RandomHorizontalFlip(r.flip),
                ]
            )
            for r in recipes
        ]

    def __getitem__(self, i: int) -> dict:
        data, label = super().__getitem__(i)
        pixels, why = decode_image(data, draft=self.draft)
        if why is not None:
            raise ValueError(f"row {i}: {why}")  # the benchmark's data has no bad images
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        return {"views": torch.stack([view(image) for view in self.views]), "label": label}


class Collate:
    """Decode a batch and crop its views with the Ray tasks' own functions."""

    def __init__(self, recipes, seed: int, draft) -> None:
        self.recipes, self.seed, self.draft, self.calls = recipes, seed, draft, 0

    def __call__(self, rows):
        self.calls += 1
        images, labels = [], []
        for data, label in rows:
            pixels, why = decode_image(data, draft=self.draft)
            if why is None:
                images.append(pixels)
                labels.append(label)
        rng = np.random.default_rng([self.seed, self.calls, os.getpid()])
        out = crop_views(images, self.recipes, rng)
        out["label"] = torch.tensor(labels)
        return out


def imagenet_like(n: int, folder: pathlib.Path, seed: int = 0) -> str:
    """``n`` smooth synthetic 500x375 / 375x500 JPEGs in one Parquet shard; returns its path."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)
        small = rng.uniform(0, 255, (h // 25, w // 25, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        arr = np.clip(np.asarray(img) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    path = folder / f"imagenet-like-{n}.parquet"
    table = pa.table(
        {"image": images, "label": [i % 10 for i in range(n)], "key": [f"img{i}" for i in range(n)]}
    )
    path.write_bytes(parquet_bytes(table, ROWS_PER_GROUP or None))  # prepare's row groups unless told
    return str(path)


def cifar_scenario(tmp: pathlib.Path, quick: bool):
    """The CIFAR-10 test shards (10,000 images in row groups of 1,000) at 32 px, batch 256."""
    return [str(p) for p in sorted(CIFAR.glob("test-*.parquet"))], view_recipes("cifar", 5), 256, None


def imagenet_scenario(tmp: pathlib.Path, quick: bool):
    """1,024 generated ImageNet-sized JPEGs (256 in quick mode) at 224 px, batch 32."""
    return [imagenet_like(256 if quick else 1024, tmp)], view_recipes("imagenet_moco_v2", 5), 32, (448, 448)


SCENARIOS = {"cifar10_32px": cifar_scenario, "imagenet_like_224px": imagenet_scenario}
PIPELINES = (
    "torch_dataloader",
    "torch_dataloader_batched",
    "ray_data",
    "ray_data_stock",
    "ray_data_spin_wait",
    "ray_data_joined_blocks",
    "ray_data_two_tasks_per_core",
    "machine_limit",
)
OURS = scheduling.OURS
SPIN = {"wait_s": 0.01, "limits_refresh_s": 0.1, "metadata_on_thread": True, "prompt_wait": False}
RAY_BLOCK_BYTES = 128 * 2**20  # Ray Data's default target_max_block_size
VARIANTS = {  # Ray arms: (scheduler settings, output block target, CPUs per read task)
    "ray_data": (OURS, OUTPUT_BLOCK_BYTES, 1.0),
    "ray_data_stock": (scheduling.RAY_DEFAULTS, OUTPUT_BLOCK_BYTES, 1.0),
    "ray_data_spin_wait": (SPIN, OUTPUT_BLOCK_BYTES, 1.0),
    "ray_data_joined_blocks": (OURS, RAY_BLOCK_BYTES, 1.0),
    "ray_data_two_tasks_per_core": (OURS, OUTPUT_BLOCK_BYTES, 0.5),
}
BASELINES = {  # ratio key -> the arm it divides by
    "x_dataloader": "torch_dataloader",
    "x_batched": "torch_dataloader_batched",
    "x_limit": "machine_limit",
}


def row_group_items(files: list[str]) -> list[dict]:
    """One work item per Parquet row group."""
    return [{"file": f, "row_group": g} for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


class RayPipeline:
    """A fresh 2-CPU Ray cluster and the training pipeline's dataset over ``files``."""

    def __init__(self, files, recipes, draft, store_mb: int) -> None:
        import ray

        self.base = used_memory()
        t0 = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=store_mb * 2**20,
            include_dashboard=False,
            log_to_driver=False,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.start_s = time.perf_counter() - t0
        self.args = (
            ReadPlan(row_group_items(files), mix=MIX, shuffle=True),
            dict(
                store=Store.open("/"),
                recipes=recipes,
                seed=0,
                run=None,
                num_classes=10,
                max_pixels=64_000_000,
                draft=draft,
            ),
        )

    def epoch(self, batch: int, variant: str):
        timings, block_bytes, task_cpus = VARIANTS[variant]
        scheduling.apply(**timings)  # read live by the executor, which runs in this process
        ds = stream(*self.args, task_cpus=task_cpus)
        ds.context.target_max_block_size = block_bytes
        return ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2)

    def close(self) -> None:
        import ray

        scheduling.apply()
        ray.shutdown()


def dataloader(dataset, batch: int, collate=None):
    """``num_workers=2``, workers started with each epoch (the default)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=False, num_workers=2, prefetch_factor=2, collate_fn=collate
    )


def timed_epoch(batches, mem_base: int | None = None) -> dict:
    """Images/s, seconds to the first batch, the peak memory rise (MB) and this process's CPU time
    per image (ms: for Ray, the driver's executor and iterator) over one epoch."""
    with PeakMemory(mem_base) as mem:
        start, cpu = time.perf_counter(), time.process_time()
        first, n = None, 0
        for b in batches:
            first = first if first is not None else time.perf_counter() - start
            n += len(b["label"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "images": n,
        "img_per_s": n / seconds,
        "first_batch_s": first,
        "peak_mem_mb": mem.peak / 2**20,
        "main_cpu_ms_per_img": 1000 * cpu / max(n, 1),
    }


def measure(
    files, recipes, batch, draft, rounds: int, pipelines: list[str], store_mb: int
) -> dict[str, dict]:
    """``rounds`` rounds of one epoch per pipeline, in turn; per-pipeline epoch records."""
    ray_pipe = None
    if any(p.startswith("ray") for p in pipelines):
        ray_pipe = RayPipeline(files, recipes, draft, store_mb)
    loaders = {
        "torch_dataloader": lambda: iter(dataloader(TorchvisionViews(files, recipes, draft), batch)),
        "torch_dataloader_batched": lambda: iter(
            dataloader(ParquetRows(files), batch, Collate(recipes, 0, draft))
        ),
    }
    epochs: dict[str, list[dict]] = {p: [] for p in pipelines}
    try:
        for r in range(rounds):
            for p in pipelines:
                if p.startswith("ray"):
                    rec = timed_epoch(ray_pipe.epoch(batch, p), mem_base=ray_pipe.base)
                elif p == "machine_limit":
                    rec = limit_epoch(files, recipes, batch, draft)
                else:
                    rec = timed_epoch(loaders[p]())
                epochs[p].append(rec)
                print(
                    f"    round {r}: {p:<25} {rec['img_per_s']:7.0f} img/s  "
                    f"first batch {rec['first_batch_s']:5.2f} s"
                    f"  peak +{rec['peak_mem_mb']:5.0f} MB"
                    f"  main process {rec.get('main_cpu_ms_per_img', 0):.2f} CPU-ms/img",
                    flush=True,
                )
    finally:
        if ray_pipe is not None:
            ray_pipe.close()
    out = {}
    for p, recs in epochs.items():
        steady = recs[1:] if len(recs) > 1 else recs  # round 0 warms caches and starts workers
        out[p] = {
            "images_per_epoch": recs[0]["images"],
            "epoch_img_per_s": [e["img_per_s"] for e in recs],
            "img_per_s": statistics.median(e["img_per_s"] for e in steady),
            "first_batch_s": statistics.median(e["first_batch_s"] for e in steady),
            "peak_mem_mb": max(e["peak_mem_mb"] for e in recs),
            "main_cpu_ms_per_img": statistics.median(e.get("main_cpu_ms_per_img", 0.0) for e in steady),
            "views": len(recipes),
        }
        out[p]["views_per_s"] = out[p]["img_per_s"] * len(recipes)
        if p.startswith("ray"):
            out[p]["cluster_start_s"] = ray_pipe.start_s
        for key, base in BASELINES.items():  # per-round ratios, then the median
            if p != base and base in epochs:
                pairs = list(zip(recs, epochs[base], strict=True))
                pairs = pairs[1:] or pairs
                out[p][key] = statistics.median(a["img_per_s"] / b["img_per_s"] for a, b in pairs)
    return out


def report(rows: list[dict], scenarios: list[str], pipelines: list[str]) -> list[dict]:
    """Print the Markdown table and return the summary."""

    def get(s, scale, kind):
        return next(
            (r for r in rows if r["scenario"] == s and r["scale"] == scale and r["pipeline"] == kind), None
        )

    def fmt(x) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(
        "\n| scenario | scale | pipeline | img/s | views/s | x usual DataLoader | x batched DataLoader "
        "| x machine limit | first batch (s) | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for s in scenarios:
        for scale in sorted({r["scale"] for r in rows if r["scenario"] == s}):
            for kind in pipelines:
                r = get(s, scale, kind)
                ratios = {key: r.get(key) for key in BASELINES}
                summary.append(
                    {"scenario": s, "scale": scale, "pipeline": kind, "img_per_s": r["img_per_s"], **ratios}
                )
                print(
                    f"| {s} | {scale}x | {kind} | {r['img_per_s']:.0f} | {r['views_per_s']:.0f} | "
                    + " | ".join(fmt(ratios[k]) for k in BASELINES)
                    + f" | {r['first_batch_s']:.2f} | {r['peak_mem_mb']:.0f} |"
                )
        for kind in pipelines:
            one, ten = get(s, 1, kind), get(s, 10, kind)
            if one and ten and kind in ("torch_dataloader", "torch_dataloader_batched", "ray_data"):
                m = ten["peak_mem_mb"] / max(
                    one["peak_mem_mb"], 1.0
                )  # other Ray arms share ray_data's cluster
                summary.append({"scenario": s, "pipeline": kind, "peak_mem_10x_over_1x": m})
                print(f"  {s} {kind}: peak memory 10x / 1x = {m:.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds; prints only")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="epochs per pipeline (default 4; the first is left out of the medians)",
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--store-mb", type=int, default=STORE_MB, help="Ray object store (MiB)")
    parser.add_argument(
        "--photo-rows-per-group", type=int, default=0, help="photos per row group (default: prepare's rule)"
    )
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    global ROWS_PER_GROUP
    ROWS_PER_GROUP = args.photo_rows_per_group
    name = "data" if args.scenarios == list(SCENARIOS) else "data-" + "-".join(args.scenarios)
    out_path = args.out or (None if args.quick else ROOT / f"benchmarks/results/{name}.json")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cacr-bench-"))
    rows = []
    costs = {}
    for name in args.scenarios:
        files, recipes, batch, draft = SCENARIOS[name](tmp, args.quick)
        costs[name] = per_photo_ms(files, recipes, draft)
        print(f"{name}: one process, per image: " + ", ".join(f"{k} {v:.2f}" for k, v in costs[name].items()))
        for scale in args.scales:
            print(f"{name} {scale}x", flush=True)
            for kind, res in measure(
                files * scale, recipes, batch, draft, rounds, args.pipelines, args.store_mb
            ).items():
                rows.append({"scenario": name, "scale": scale, "pipeline": kind, **res})
    summary = report(rows, args.scenarios, args.pipelines)
    result = {
        "benchmark": "data",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "object_store_mb": args.store_mb,
        "photo_rows_per_group": args.photo_rows_per_group or "prepare's rule (about 8 MiB of images)",
        "ray_arms": {
            k: {"scheduling": t, "target_max_block_size": b, "task_cpus": c}
            for k, (t, b, c) in VARIANTS.items()
        },
        "baselines": BASELINES,
        "targets": {
            "ray_data x_dataloader (photos)": ">= 1.5",
            "ray_data x_batched": ">= 0.95",
            "peak_mem_10x_over_1x": "<= 1.2",
        },
        "per_image_ms_one_process": costs,
        "summary": summary,
        "rows": rows,
    }
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
