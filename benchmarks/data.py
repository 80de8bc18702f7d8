"""Ray Data pipeline vs a torch DataLoader: images/s, views/s, time to first batch, peak memory.

Both read the same Parquet shards, decode with the same guarded decoder and draw K + 1 = 5 views
with the same vectorised crops (``crop_views``), with 2 worker processes each (Ray: a 2-CPU
local cluster; DataLoader: ``num_workers=2``). Scenarios: (a) the CIFAR-10 JPEG shards at 32 px,
(b) generated ImageNet-sized JPEGs (about 500x375) at 224 px, each at 1x and 10x the data
(10x = the same shards listed ten times / ten times the images). Throughput is the median over
epochs after the first; memory is the peak rise of the machine's used memory during a run,
including the start of its worker processes (each Ray run gets a fresh cluster).

    python benchmarks/data.py            # writes benchmarks/results/data.json
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

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.data.augment import crop_views, view_recipes  # noqa: E402
from pipelines.data.decode import decode_image  # noqa: E402
from pipelines.data.loader import read_decode_view  # noqa: E402
from pipelines.data.storage import Store  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"


def used_memory() -> int:
    """Bytes in use on the machine (MemTotal - MemAvailable from /proc/meminfo)."""
    info = dict(line.split(":", 1) for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


class PeakMemory:
    """Samples the machine's used memory in a thread; ``peak`` is the largest rise."""

    def __init__(self) -> None:
        self.base = used_memory()
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
    """Rows of Parquet shards (image bytes and label), for the DataLoader baseline."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.index = []
        for f, path in enumerate(files):
            n = pq.ParquetFile(path).metadata.num_rows
            self.index += [(f, i) for i in range(n)]
        self._cache: dict[int, pa.Table] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        f, row = self.index[i]
        if f not in self._cache:  # each worker process keeps the shards it touches
            self._cache = {f: pq.read_table(self.files[f], columns=["image", "label"])}
        table = self._cache[f]
        return table["image"][row].as_py(), table["label"][row].as_py()


class Collate:
    """Decode a batch and crop its views, like the Ray pipeline's ``read_decode_view``."""

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
    """``n`` smooth synthetic 500x375-ish JPEGs in one Parquet shard; returns its path."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)
        small = rng.uniform(0, 255, (h // 25, w // 25, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 8, (h, w, 3))
        arr = np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
        labels.append(i % 10)
    path = folder / f"imagenet-like-{n}.parquet"
    pq.write_table(pa.table({"image": images, "label": labels, "key": [f"img{i}" for i in range(n)]}), path,
                   row_group_size=64)
    return str(path)


def row_group_items(files: list[str]) -> list[dict]:
    return [{"file": f, "row_group": g} for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


def run_ray(files, recipes, batch, epochs, draft):
    """A fresh 2-CPU Ray cluster per run, so its start-up memory counts at every scale."""
    import ray

    state = {}

    def setup():
        ray.init(address="local", num_cpus=2, object_store_memory=1_000_000_000, include_dashboard=False,
                 log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        store = Store.open("/")
        state["ds"] = ray.data.from_items(row_group_items(files)).map_batches(
            read_decode_view, batch_size=1, batch_format="numpy",
            fn_kwargs=dict(store=store, filters={}, recipes=recipes, seed=0, run=None, num_classes=10,
                           max_pixels=64_000_000, draft=draft))

    def batches():
        return state["ds"].iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2)

    return _epochs(batches, epochs, setup=setup, teardown=ray.shutdown)


def run_torch(files, recipes, batch, epochs, draft):
    loader = torch.utils.data.DataLoader(ParquetRows(files), batch_size=batch, shuffle=False, num_workers=2,
                                         collate_fn=Collate(recipes, 0, draft), persistent_workers=False,
                                         prefetch_factor=2)
    return _epochs(lambda: iter(loader), epochs)


def _epochs(make_iter, epochs, setup=None, teardown=None):
    rates, first, total = [], None, 0
    with PeakMemory() as mem:
        if setup:
            setup()
        for e in range(epochs):
            start = time.perf_counter()
            n = 0
            for i, b in enumerate(make_iter()):
                if e == 0 and i == 0:
                    first = time.perf_counter() - start
                n += len(b["label"])
            rates.append(n / (time.perf_counter() - start))
            total = n
        if teardown:
            teardown()
    steady = rates[1:] if len(rates) > 1 else rates
    return {"images_per_epoch": total, "first_batch_s": first, "epoch_img_per_s": rates,
            "img_per_s": statistics.median(steady), "peak_mem_mb": mem.peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.quick else 3)
    out_path = args.out or (None if args.quick else ROOT / "benchmarks/results/data.json")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cacr-bench-"))
    cifar_1x = [str(p) for p in sorted(CIFAR.glob("test-*.parquet"))]
    n_img = 64 if args.quick else 256
    inet_1x = [imagenet_like(n_img, tmp)]
    scenarios = {
        "cifar10_32px": (cifar_1x, view_recipes("cifar", 5), 256, None),
        "imagenet_like_224px": (inet_1x, view_recipes("imagenet_mocov2", 5), 32, (448, 448)),
    }
    rows = []
    for name, (files, recipes, batch, draft) in scenarios.items():
        for scale in (1, 10):
            listed = files * scale
            for kind, fn in (("torch_dataloader", run_torch), ("ray_data", run_ray)):
                res = fn(listed, recipes, batch, epochs, draft)
                res.update(scenario=name, scale=scale, pipeline=kind, views=len(recipes),
                           views_per_s=res["img_per_s"] * len(recipes))
                rows.append(res)
                print(f"  {name:<20} {scale:>2}x {kind:<17} {res['img_per_s']:8.0f} img/s  first batch "
                      f"{res['first_batch_s']:5.2f} s  peak +{res['peak_mem_mb']:6.0f} MB", flush=True)
    def get(s, scale, kind):
        return next(r for r in rows if r["scenario"] == s and r["scale"] == scale and r["pipeline"] == kind)

    print("\n| scenario | scale | DataLoader img/s | Ray Data img/s | Ray / DataLoader | Ray views/s | "
          "first batch Ray / DL (s) | peak MB Ray / DL |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for s in scenarios:
        for scale in (1, 10):
            t, r = get(s, scale, "torch_dataloader"), get(s, scale, "ray_data")
            ratio = r["img_per_s"] / t["img_per_s"]
            summary.append({"scenario": s, "scale": scale, "ray_over_dataloader": ratio})
            print(f"| {s} | {scale}x | {t['img_per_s']:.0f} | {r['img_per_s']:.0f} | {ratio:.2f} | "
                  f"{r['views_per_s']:.0f} | {r['first_batch_s']:.2f} / {t['first_batch_s']:.2f} | "
                  f"{r['peak_mem_mb']:.0f} / {t['peak_mem_mb']:.0f} |")
        for kind in ("ray_data", "torch_dataloader"):
            m = get(s, 10, kind)["peak_mem_mb"] / max(get(s, 1, kind)["peak_mem_mb"], 1.0)
            summary.append({"scenario": s, "pipeline": kind, "peak_mem_10x_over_1x": m})
            print(f"  {s} {kind}: peak memory 10x / 1x = {m:.2f}")
    result = {"benchmark": "data", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpus": os.cpu_count(), "epochs": epochs, "targets": {"ray_over_dataloader": ">= 1.0",
              "peak_mem_10x_over_1x": "<= 1.2"}, "summary": summary, "rows": rows}
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
