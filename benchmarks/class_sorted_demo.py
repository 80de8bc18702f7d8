"""The end-to-end check of the large-dataset path: the demo's recipe on data that arrives grouped by class.

The bundled CIFAR-10 sample is written out as a class-sorted ImageFolder tree (``train/<class>/``,
``val/<class>/``: the sample's train and test splits), prepared with ``pipelines/prepare.py`` and
trained with ``experiment=demo``. Three runs, each reported as the kNN gain of the pretrained
encoder over the same encoder at random init (BatchNorm recomputed), and the linear probe's:

* ``demo``: ``make demo``'s own run on the bundled Parquet sample (already in random order);
* ``class_sorted``: the tree through this checkout's ``prepare`` and ``pretrain``;
* ``class_sorted_before``: the same tree through the code before the large-dataset changes
  (``--before <commit>``, run from a git worktree of it): one shard per class folder, read in
  one fixed order.

The target: ``class_sorted`` within 1.5 points of ``demo``'s kNN gain, and clearly above
``class_sorted_before``. About 25 minutes on 2 cores.

    python benchmarks/class_sorted_demo.py               # writes benchmarks/results/class_sorted_demo.json
    python benchmarks/class_sorted_demo.py --before 273c20a
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "cifar10-sample"
BEFORE = "273c20a"  # the last commit before the write-time shuffle and the per-epoch order


def write_tree(tree: pathlib.Path) -> dict[str, int]:
    """The sample as ``train/`` and ``val/`` class folders of its JPEGs; images per split."""
    import pyarrow.parquet as pq

    classes = (SAMPLE / "classes.txt").read_text().split()
    counts = {}
    for split, prefix in (("train", "train"), ("val", "test")):
        (shard,) = sorted(SAMPLE.glob(f"{prefix}-*.parquet"))
        table = pq.read_table(shard, columns=["image", "label"]).to_pydict()
        for i, (data, label) in enumerate(zip(table["image"], table["label"], strict=True)):
            folder = tree / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(data)
        counts[split] = len(table["label"])
    return counts


def run(cmd: list[str], cwd: pathlib.Path, log: pathlib.Path) -> float:
    """Run a command (its output to ``log``); its wall time. Fails loudly with the log's tail."""
    # PYTHONPATH: the checkout's own packages, not the editable install's (a worktree of another commit)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(cwd)}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def gains(run_dir: pathlib.Path) -> dict[str, float]:
    """kNN and linear-probe numbers of a finished run, and their gains over random init."""
    res = json.loads((run_dir / "results.json").read_text())
    pre, rnd = res["pretrained"], res["random_init"]
    lin = lambda r: (r.get("linear") or {}).get("final_top1")  # noqa: E731
    out = {
        "knn_pretrained": pre["knn_top1"],
        "knn_random_init": rnd["knn_top1"],
        "knn_gain": pre["knn_top1"] - rnd["knn_top1"],
    }
    if lin(pre) is not None and lin(rnd) is not None:
        out.update(linear_pretrained=lin(pre), linear_random_init=lin(rnd), linear_gain=lin(pre) - lin(rnd))
    return out


def pretrain_and_read(
    code: pathlib.Path, python: str, name: str, storage: pathlib.Path, logs: pathlib.Path, *overrides: str
) -> dict:
    seconds = run(
        [
            python,
            "pipelines/pretrain.py",
            "experiment=demo",
            f"trainer.storage_path={storage}",
            f"trainer.name={name}",
            *overrides,
        ],
        code,
        logs / f"{name}.log",
    )
    return {**gains(storage / name), "seconds": round(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="commit to measure the old data path with")
    parser.add_argument("--work", type=pathlib.Path, default=None, help="working folder (default: new temp)")
    args = parser.parse_args()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="cacr-class-sorted-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    counts = write_tree(work / "tree")
    print(f"class-sorted tree: {counts} images under {work / 'tree'}", flush=True)
    old = work / "before"
    if not old.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    shards = {"class_sorted": work / "shards-now", "class_sorted_before": work / "shards-before"}
    results: dict[str, dict] = {}
    for key, code in (("class_sorted", ROOT), ("class_sorted_before", old)):
        shutil.rmtree(shards[key], ignore_errors=True)
        run(
            [
                python,
                "pipelines/prepare.py",
                "dataset=imagefolder",
                f"dataset.root={work / 'tree'}",
                f"out={shards[key]}",
            ],
            code,
            logs / f"prepare-{key}.log",
        )
        results[key] = pretrain_and_read(
            code,
            python,
            key,
            work / "runs",
            logs,
            "dataset=shards",
            f"dataset.root={shards[key]}",
            "dataset.eval_split=val",
        )
        print(f"{key}: {results[key]}", flush=True)
    results["demo"] = pretrain_and_read(ROOT, python, "demo", work / "runs", logs)
    print(f"demo: {results['demo']}", flush=True)
    summary = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": f"python benchmarks/class_sorted_demo.py --before {args.before}",
        "images": counts,
        "runs": results,
        "class_sorted_knn_gain_minus_demo": results["class_sorted"]["knn_gain"] - results["demo"]["knn_gain"],
        "class_sorted_knn_gain_minus_before": results["class_sorted"]["knn_gain"]
        - results["class_sorted_before"]["knn_gain"],
    }
    print(f"\n{'run':<22} {'kNN gain':>9} {'linear gain':>12}")
    for key, r in results.items():
        lin = r.get("linear_gain")
        print(f"{key:<22} {r['knn_gain']:>+9.2f} {'' if lin is None else f'{lin:+.2f}':>12}")
    diff = summary["class_sorted_knn_gain_minus_demo"]
    print(f"class-sorted vs demo: {diff:+.2f} points (target: within 1.5)")
    out = ROOT / "benchmarks" / "results" / "class_sorted_demo.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
