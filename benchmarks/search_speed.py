"""Search speed: concurrent trials' total images/s against one run alone; each search's wall time.

    python benchmarks/search_speed.py concurrency            # 1 trial alone, 2 at once, 1 wide; 3 rounds
    python benchmarks/search_speed.py searches               # every configs/search/*.yaml, timed
    python benchmarks/search_speed.py searches --only cacr_k

``concurrency``: the trials of ``configs/search/cacr_temperatures.yaml`` (its per-trial overrides,
shortened with ``--epochs`` and ``--images``), run as a search of one trial (the single run), then
as a search of ``--trials`` trials at a time (no ASHA, so every trial runs every epoch), in turn,
``--rounds`` times. The rate of the trials together is the images they trained while every one
of them was training (from the step times in their ``metrics.jsonl``; data waits and kNN passes
included, start-up and the lone tail left out) over that window's length; a single run's rate
is measured the same way from its first to its last logged step. The ratio is the median over
rounds of the per-round ratio (target >= 0.8). The wall time of each search (start-up and tails
included) is reported too: ``wall_speedup`` is the trials run one after another against at once.
The third arm, ``wide``, is one trial at a time with ``--wide-workers`` DDP workers (the machine's
CPUs given to one trial instead of shared out): ``wide_over_concurrent`` is its images/s over the
trials' at once and ``concurrent_wall_speedup_over_wide`` the wall time of as many wide trials one
after another over the trials' at once: the numbers that pick how a search on this machine should
run (``--wide-workers 0`` skips the arm).
Writes ``benchmarks/results/search_concurrency.json``.

``searches``: each shipped search run from scratch as a user would (``python pipelines/tune.py
search=<name>`` in a fresh folder), its wall time and best trial. Writes
``benchmarks/results/searches.json`` (target: each <= 35 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
TARGET_SEARCH_S = 35 * 60


def trial_progress(folder: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per trial, the times of its logged steps and the images trained by then (``metrics.jsonl``)."""
    out = {}
    for metrics in sorted(folder.glob("trials/*/metrics.jsonl")):
        batch = int(yaml.safe_load((metrics.parent / "config.yaml").read_text())["trainer"]["batch_size"])
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss/total" in r and "time" in r]
        if len(rows) >= 2:
            out[metrics.parent.name] = (
                np.array([r["time"] for r in rows]),
                np.array([r["step"] * batch for r in rows]),
            )
    return out


def rate_while_all_train(progress: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Images/s of all trials together over the window in which every one of them was training.

    Each trial's images trained inside the window (interpolated between its logged steps), summed,
    over the window's length: start-up before and the tail after (one trial left alone) are out.
    Returns ``(images/s, window seconds)``.
    """
    start = max(t[0] for t, _ in progress.values())
    end = min(t[-1] for t, _ in progress.values())
    if end <= start:
        raise SystemExit("the trials never trained at the same time: no common window to measure")
    images = sum(np.interp(end, t, n) - np.interp(start, t, n) for t, n in progress.values())
    return float(images / (end - start)), float(end - start)


def run_search(name: str, overrides: list[str], storage: pathlib.Path, extra: list[str] = ()) -> dict:
    """``python pipelines/tune.py`` with ``overrides``; wall time and the search's folder."""
    cmd = [sys.executable, str(ROOT / "pipelines/tune.py"), *overrides, f"tune.name={name}"]
    cmd += [f"tune.storage_path={storage}", "tune.verbose=0", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {"wall_s": wall, "folder": storage / name}


def concurrency(args: argparse.Namespace) -> dict:
    """Rounds of one trial alone, then ``args.trials`` at once; per-round ratios of total images/s."""
    base = yaml.safe_load((ROOT / "configs/search/cacr_temperatures.yaml").read_text())
    per_trial = [
        *base["overrides"],
        f"trainer.epochs={args.epochs}",
        f"dataset.max_train_images={args.images}",
    ]
    values = [0.9, 0.6, 1.3, 0.45, 1.8, 0.3][: args.trials]

    def spec(folder: pathlib.Path, grid: list[float], workers: int = 1) -> list[str]:
        """A search file of ``grid`` (trials of ``workers`` workers) in ``folder``/search; its arguments."""
        name = f"speed_{len(grid)}_{workers}"
        search = {
            "name": name,
            "experiment": base["experiment"],
            "overrides": [*per_trial, f"trainer.num_workers={workers}"],
            "params": {"objective.hparams.t_neg": {"grid": grid}},
            "num_samples": 1,
            "asha": None,
        }
        (folder / "search").mkdir(parents=True, exist_ok=True)
        (folder / "search" / f"{name}.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
        return ["--config-dir", str(folder), f"search={name}"]

    rounds = []
    with tempfile.TemporaryDirectory(prefix="cacr-search-speed-") as tmp:
        for r in range(args.rounds):
            single = run_search(f"single{r}", spec(pathlib.Path(tmp), values[:1]), pathlib.Path(tmp))
            together = run_search(
                f"together{r}",
                spec(pathlib.Path(tmp), values),
                pathlib.Path(tmp),
                [f"tune.max_concurrent_trials={args.trials}"],
            )
            one, _ = rate_while_all_train(trial_progress(single["folder"]))
            wide = None
            if args.wide_workers:
                wide = run_search(
                    f"wide{r}", spec(pathlib.Path(tmp), values[:1], args.wide_workers), pathlib.Path(tmp)
                )
                wide["rate"], _ = rate_while_all_train(trial_progress(wide["folder"]))
            many_progress = trial_progress(together["folder"])
            if len(many_progress) != args.trials:
                raise SystemExit(
                    f"expected {args.trials} trials with logged steps, found {len(many_progress)}"
                )
            many, window = rate_while_all_train(many_progress)
            row = {
                "single_img_per_s": one,
                "concurrent_total_img_per_s": many,
                "concurrent_window_s": window,
                "single_wall_s": single["wall_s"],
                "concurrent_wall_s": together["wall_s"],
            }
            row["ratio"] = row["concurrent_total_img_per_s"] / row["single_img_per_s"]
            row["wall_ratio"] = args.trials * row["single_wall_s"] / row["concurrent_wall_s"]
            if wide:
                row.update(wide_img_per_s=wide["rate"], wide_wall_s=wide["wall_s"])
                row["wide_over_concurrent"] = wide["rate"] / row["concurrent_total_img_per_s"]
                # wall time of the trials one wide trial after another, over all of them at once
                sequential = args.trials * wide["wall_s"]
                row["concurrent_wall_speedup_over_wide"] = sequential / row["concurrent_wall_s"]
            rounds.append(row)
            print(
                f"round {r + 1}: one trial {row['single_img_per_s']:.0f} img/s "
                f"({row['single_wall_s']:.0f} s); "
                f"{args.trials} at once {row['concurrent_total_img_per_s']:.0f} img/s in all "
                f"({row['concurrent_wall_s']:.0f} s): {row['ratio']:.2f}x"
                + (
                    f"; one {args.wide_workers}-worker trial {row['wide_img_per_s']:.0f} img/s "
                    f"({row['wide_wall_s']:.0f} s): {row['wide_over_concurrent']:.2f}x the trials at once"
                    if wide
                    else ""
                ),
                flush=True,
            )
    ratio = statistics.median(r["ratio"] for r in rounds)
    wall = statistics.median(r["wall_ratio"] for r in rounds)
    print(
        f"\n{args.trials} trials at once: {ratio:.2f}x one trial's images/s in all "
        f"(target >= {TARGET_RATIO}); "
        f"wall time {wall:.2f}x faster than running them one after another"
    )
    wide_ratio = wide_wall = None
    if args.wide_workers:
        wide_ratio = statistics.median(r["wide_over_concurrent"] for r in rounds)
        wide_wall = statistics.median(r["concurrent_wall_speedup_over_wide"] for r in rounds)
        print(
            f"one trial of {args.wide_workers} workers at a time: {wide_ratio:.2f}x the images/s of "
            f"{args.trials} one-worker trials at once; those finish {wide_wall:.2f}x faster in wall time"
        )
    return {
        "benchmark": "search_concurrency",
        "per_trial_overrides": per_trial,
        "trials": args.trials,
        "ratio_total_over_single": ratio,
        "wall_speedup_over_sequential": wall,
        "wide_workers": args.wide_workers,
        "wide_over_concurrent": wide_ratio,
        "concurrent_wall_speedup_over_wide": wide_wall,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "rounds": rounds,
    }


def best_of(folder: pathlib.Path) -> dict:
    """The best row of a search's ``results.csv`` (first row: the table is sorted by score)."""
    with (folder / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {"trials": len(rows), "best": rows[0] if rows else None}


def searches(args: argparse.Namespace) -> dict:
    """Every shipped search (or ``--only``), run from scratch in turn; wall time and best trial."""
    names = args.only or sorted(p.stem for p in (ROOT / "configs/search").glob("*.yaml"))
    out = {}
    with tempfile.TemporaryDirectory(prefix="cacr-searches-") as tmp:
        for name in names:
            print(f"search={name} ...", flush=True)
            res = run_search(name, [f"search={name}"], pathlib.Path(tmp))
            out[name] = {"wall_s": res["wall_s"], "minutes": res["wall_s"] / 60, **best_of(res["folder"])}
            ok = "within" if res["wall_s"] <= TARGET_SEARCH_S else "OVER"
            print(f"  {name}: {res['wall_s'] / 60:.1f} min ({ok} the 35-minute target)", flush=True)
    return {"benchmark": "searches", "target_s": TARGET_SEARCH_S, "searches": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("concurrency", help="total images/s of trials at once against one alone")
    c.add_argument("--trials", type=int, default=2)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--images", type=int, default=3000)
    c.add_argument("--wide-workers", type=int, default=2, help="workers of the one-wide-trial arm; 0: skip")
    s = sub.add_parser("searches", help="wall time of each shipped search")
    s.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    result = concurrency(args) if args.mode == "concurrency" else searches(args)
    result.update(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), cpus=os.cpu_count())
    name = "search_concurrency" if args.mode == "concurrency" else "searches"
    if args.mode == "searches" and args.only:
        name += "-" + "-".join(args.only)
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
