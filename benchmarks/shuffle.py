"""What the large-dataset order costs: ``prepare`` with the write-time shuffle against without it,
and the training feed with a new order every epoch against a fixed file order.

* **prepare**: a class-sorted ImageFolder tree of generated ImageNet-sized JPEGs (500x375 and
  375x500, 10 classes) at 1x and 10x, written with the shuffle (scatter + gather) and without it
  (one shard per class folder, as before). Images/s and the peak memory (PSS) held by the
  benchmark's process tree, its Ray cluster and workers included, during the run (other jobs on
  the machine do not count). ``rows_per_shard`` is 250 at 1x and
  10x; the plan guesses 1,000 images per folder either way (100 at 1x, 1,000 at 10x), so the 10x
  run also shows that a task's memory does not grow with the data.
* **feed**: the prepared 1x shards read by the training pipeline (K + 1 = 5 views at 224 px): with
  the per-epoch order (rows of 4 row groups mixed, ``dataset.mix_row_groups``) against a fixed
  order with no mixing (what training read before). Images/s.

Modes take turns within each round on one Ray cluster and a ratio is the median of the per-round
ratios (the machine's speed drifts over minutes).

    python benchmarks/shuffle.py              # writes benchmarks/results/shuffle.json (5-15 min on 2 cores)
    python benchmarks/shuffle.py --quick      # 1 round, smaller; prints only
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).parent]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks.data

import numpy as np  # noqa: E402

from benchmarks.data import PeakMemory, imagenet_like, timed_epoch  # noqa: E402
from pipelines.data.prepare import prepare_dataset  # noqa: E402
from pipelines.data.read_tasks import ReadPlan, stream  # noqa: E402
from pipelines.data.recipes import view_recipes  # noqa: E402
from pipelines.data.shard_index import index_shards, with_rows  # noqa: E402
from pipelines.data.shuffle_writer import ShuffleSettings  # noqa: E402
from pipelines.data.sources import open_source  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = 10
ROWS_PER_SHARD = 250


def tree_pss() -> int:
    """Bytes of memory (PSS: shared pages split between their users) held by this process and
    every process under it: the local Ray cluster it started, its workers and object store. Other
    jobs on the machine do not count, so the figure holds on a busy machine."""
    import os

    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


class TreePeak(PeakMemory):
    """The largest :func:`tree_pss` while it runs (the whole tree, its Ray cluster included).

    Not a rise over the start: the cluster's workers stay up between runs, so a later run may
    need no memory beyond what the earlier ones left held (a rise of 0 measured 10x/1x as 1,729).
    """

    def __init__(self) -> None:
        super().__init__(base=0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss() - self.base)
            time.sleep(0.2)


def class_tree(tmp: pathlib.Path, per_class: int) -> pathlib.Path:
    """``train/c<k>/<i>.jpg``: generated photos, grouped by class (written once, then reused)."""
    import pyarrow.parquet as pq

    root = tmp / f"tree{per_class}"
    if root.exists():
        return root
    (tmp / f"photos{per_class}").mkdir(parents=True, exist_ok=True)
    shard = imagenet_like(per_class, tmp / f"photos{per_class}")
    images = pq.read_table(shard, columns=["image"])["image"].to_pylist()
    for c in range(CLASSES):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i, data in enumerate(images):  # each class its own copy of the photos
            (folder / f"{i:05d}.jpg").write_bytes(data)
    return root


def prepare_once(tree: pathlib.Path, out: pathlib.Path, shuffled: bool) -> dict:
    """One prepare run into a fresh folder: images/s and the peak memory rise (MB)."""
    shutil.rmtree(out, ignore_errors=True)
    settings = ShuffleSettings(enabled=shuffled, seed=0, rows_per_shard=ROWS_PER_SHARD)
    with TreePeak() as mem:
        start = time.perf_counter()
        manifest = prepare_dataset("imagefolder", str(tree), str(out), shuffle=settings)
        seconds = time.perf_counter() - start
    rows = manifest["splits"]["train"]["rows"]
    return {"images": rows, "img_per_s": rows / seconds, "seconds": seconds, "peak_mem_mb": mem.peak / 2**20}


def feed_plans(out: pathlib.Path) -> dict[str, ReadPlan]:
    source = open_source("shards", str(out))
    index = index_shards(source, "train")
    items = with_rows(index, np.arange(len(index.labels)))
    return {"per_epoch_order": ReadPlan(items, mix=4, shuffle=True), "fixed_order": ReadPlan(items)}


def median_ratio(records: dict[str, list[dict]], mode: str, base: str, key: str = "img_per_s") -> float:
    return statistics.median(a[key] / b[key] for a, b in zip(records[mode], records[base], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the prepare comparison")
    parser.add_argument("--feed-rounds", type=int, default=5, help="rounds of the feed comparison (quick)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    per_class = 20 if args.quick else 100  # 1x; 10x holds ten times as many per class
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=2500 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cacr-shuffle-bench-"))
    trees = {"1x": class_tree(tmp, per_class), "10x": class_tree(tmp, 10 * per_class)}
    prep: dict[str, list[dict]] = {}
    for r in range(rounds + 1):  # round 0 starts the cluster's workers and is not counted
        for scale, tree in trees.items():
            for shuffled in (True, False) if r % 2 else (False, True):  # modes take turns going first
                name = f"{scale}_{'shuffled' if shuffled else 'source_order'}"
                rec = prepare_once(tree, tmp / f"out-{name}", shuffled)
                if r:
                    prep.setdefault(name, []).append(rec)
                print(
                    f"  round {r}: prepare {name:<20} {rec['img_per_s']:6.0f} img/s  "
                    f"{rec['seconds']:6.1f} s  peak +{rec['peak_mem_mb']:5.0f} MB",
                    flush=True,
                )
    recipes = view_recipes("imagenet_moco_v2", 5)
    fn_kwargs = dict(
        store=open_source("shards", str(tmp / "out-1x_shuffled")).store,
        recipes=recipes,
        seed=0,
        run=None,
        num_classes=CLASSES,
        max_pixels=64_000_000,
        draft=(448, 448),
    )
    datasets = {k: stream(p, fn_kwargs) for k, p in feed_plans(tmp / "out-1x_shuffled").items()}
    feed: dict[str, list[dict]] = {k: [] for k in datasets}
    feed_rounds = 1 if args.quick else args.feed_rounds
    for r in range(feed_rounds + 1):  # round 0 warms the workers up and is not counted
        for k, ds in datasets.items() if r % 2 else reversed(datasets.items()):  # modes take turns first
            rec = timed_epoch(ds.iter_batches(batch_size=64, batch_format="numpy", prefetch_batches=2))
            if r:
                feed[k].append(rec)
            print(f"  round {r}: feed {k:<16} {rec['img_per_s']:6.0f} img/s", flush=True)
    ray.shutdown()
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/shuffle.py", *sys.argv[1:]]),
        "rounds": rounds,
        "feed_rounds": feed_rounds,
        "memory": "peak_mem_mb: the largest PSS of the benchmark's whole process tree (its Ray cluster, "
        "workers and object store included) during each prepare run",
        "images_per_class": {"1x": per_class, "10x": 10 * per_class},
        "rows_per_shard": ROWS_PER_SHARD,
        "prepare": {
            k: {
                "median_img_per_s": statistics.median(x["img_per_s"] for x in v),
                "median_peak_mem_mb": statistics.median(x["peak_mem_mb"] for x in v),
                "runs": v,
            }
            for k, v in prep.items()
        },
        "prepare_shuffled_vs_source_order": {
            s: median_ratio(prep, f"{s}_shuffled", f"{s}_source_order") for s in trees
        },
        "prepare_shuffled_peak_mem_10x_over_1x": statistics.median(
            a["peak_mem_mb"] / b["peak_mem_mb"]
            for a, b in zip(prep["10x_shuffled"], prep["1x_shuffled"], strict=True)
        ),
        "feed": {
            k: {"median_img_per_s": statistics.median(x["img_per_s"] for x in v), "runs": v}
            for k, v in feed.items()
        },
        "feed_per_epoch_order_vs_fixed": median_ratio(feed, "per_epoch_order", "fixed_order"),
    }
    print(
        "\nprepare, shuffled / source order (images/s):",
        {k: round(v, 2) for k, v in result["prepare_shuffled_vs_source_order"].items()},
        "(target >= 0.7)",
    )
    print(
        f"prepare with shuffle, peak memory 10x / 1x: {result['prepare_shuffled_peak_mem_10x_over_1x']:.2f}"
        " (target <= 1.2)"
    )
    print(
        f"feed, per-epoch order / fixed order (images/s): {result['feed_per_epoch_order_vs_fixed']:.2f}"
        " (target >= 0.9)"
    )
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "shuffle.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
