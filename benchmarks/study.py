"""Run a study and keep its result: per-seed values, mean ± std per cell, wall time, as JSON.

    python benchmarks/study.py                                   # small_scale_methods_demo
    python benchmarks/study.py --study k_ablation_demo

Runs ``pipelines/study.py study=<name>`` in a fresh folder (a local Ray cluster of its own; run
it alone on the machine), then writes ``benchmarks/results/<name>.json`` and ``<name>.md`` (the
study's table) and prints each method's difference to the first row (the baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="small_scale_methods_demo")
    parser.add_argument("--folder", default=None, help="runs folder (default: a new temporary one)")
    args = parser.parse_args()
    folder = pathlib.Path(args.folder or tempfile.mkdtemp(prefix="study-"))
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    command = [sys.executable, "pipelines/study.py", f"study={args.study}", f"tune.storage_path={folder}"]
    t0 = time.time()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    seconds = time.time() - t0
    out = folder / args.study
    cells = [r for r in csv.DictReader((out / "study.csv").open()) if r["part"] == "value"]
    for r in cells:
        r["values"] = json.loads(r["values"])
        r["mean"] = float(r["mean"]) if r["mean"] else None
        r["std"] = float(r["std"]) if r["std"] else None
    base = cells[0]
    print(f"\n{args.study}: {seconds / 60:.1f} min wall")
    for r in cells:
        diff = None if r["mean"] is None or base["mean"] is None else r["mean"] - base["mean"]
        r["difference_to_first_row"] = diff
        spread = f" ± {r['std']:.2f}" if r["std"] is not None else ""
        cell = f"{r['method']:>10} {r['column']}: {r['mean']:.2f}{spread} (n={r['n']})"
        print(f"  {cell}  vs {base['method']}: {diff:+.2f}")
    result = {
        "study": args.study,
        "date": time.strftime("%Y-%m-%d"),
        "command": f"python benchmarks/study.py --study {args.study}",
        "wall_seconds": round(seconds, 1),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
        "metric": "linear probe top-1 (final epoch) of the pretrained encoder",
        "cells": cells,
    }
    results = ROOT / "benchmarks" / "results"
    (results / f"{args.study}.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / f"{args.study}.md").write_text((out / "study.md").read_text())
    print(f"written: {results / (args.study + '.json')}")


if __name__ == "__main__":
    main()
