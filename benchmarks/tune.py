"""Ray Tune with ASHA against the same grid run to completion, in one run: wall time and winner.

A fixed grid of 12 CACR repulsion temperatures (``objective.hparams.t_neg``, from far too sharp
to the paper's 0.9) on the bundled CIFAR-10 sample (1,600 images per trial, SmallAlexNet at 1/8
width, K = 2, 27 epochs, one 0.45-CPU worker per trial, 2 trials at a time): first every trial
to the end (FIFO, the baseline), then the same grid in the same order with ASHA (grace 1 epoch,
reduction factor 3: rungs at 1, 3, 9 and 27 epochs). Both pick the trial with the highest final
kNN top-1 among those that ran all epochs. Target: ASHA at least 2x faster with the same winner.

Order: Tune starts a grid's trials in the order listed, and async ASHA judges each trial against
those that reached its rung before it, so the order matters. By default the grid runs in a fixed
shuffled order (``random.Random(0)``: the winner, 0.9, starts 11th of 12), as a grid written
without knowing the answer, or a random search, would. ``--order ascending`` is ASHA's worst
case here: quality roughly rises with t_neg, so most trials beat the ones before them and are
promoted, and the winner starts last.

Also reads the machine's busy CPU-seconds per mode (Linux) and fits a fixed cost per trial and
a cost per trial-epoch from the two modes (a rough split: trials running alone or in pairs, and
idle actors whose cost grows with a trial's life, blur it). Writes
``benchmarks/results/tune.json``.

Measured (2 cores, 12 x 1,600 images): shuffled 1,994 s vs 883 s, 2.26x, same winner (ASHA ran
128 of 324 trial-epochs); ASHA alone in ascending order, same code, 1,162 s (about 1.7x, 162
trial-epochs, same winner). Earlier, in ascending order and before the trials' processes got
lighter: 8 values 1.82x (98 of 216 trial-epochs), 12 values 1.82x (130 of 324: ASHA kept the
three best and the first-arriving trial to the end). A trial's start-up (a dozen Ray
processes) keeps the wall-time ratio below the trial-epoch ratio.

    python benchmarks/tune.py                     # 1 repetition of each (about 50 minutes on 2 cores)
    python benchmarks/tune.py --repeats 3         # the median of 3 of each
    python benchmarks/tune.py --order ascending   # ASHA's worst case
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import random
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

GRID = [0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.12, 0.2, 0.9]
TARGET = 2.0
ORDER_SEED = 0


def grid_order(order: str) -> list[float]:
    """The grid in the order its trials start: ``"shuffled"`` (seeded) or ``"ascending"``."""
    if order == "ascending":
        return sorted(GRID)
    if order == "shuffled":
        values = list(GRID)
        random.Random(ORDER_SEED).shuffle(values)
        return values
    raise ValueError(f"--order must be 'shuffled' or 'ascending', got {order!r}")


def machine_cpu_seconds() -> float | None:
    """CPU-seconds the whole machine has been busy (Linux ``/proc/stat``), ``None`` elsewhere."""
    try:
        ticks = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / 100  # all but idle and iowait, in USER_HZ (100)


def grid_search(
    asha: bool, storage: pathlib.Path, epochs: int, images: int, factor: int, grid: list[float] | None = None
) -> dict:
    """One search of ``grid`` (default :data:`GRID`) in its order; wall time, winner and trial epochs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.search.run import search

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("tune"), resolve=True)
    cfg["search"] = {
        "name": "asha" if asha else "full",
        "experiment": "smoke",
        "overrides": [
            "trainer.num_workers=1",
            "trainer.resources_per_worker={CPU: 0.45}",
            f"trainer.epochs={epochs}",
            f"dataset.max_train_images={images}",
            "eval.knn_bank_size=1000",
            "eval.final_linear_probe=false",
            "eval.random_init_baseline=false",
        ],
        "params": {"objective.hparams.t_neg": {"grid": list(grid or GRID)}},
        "num_samples": 1,
        "asha": {"grace_period": 1, "reduction_factor": factor} if asha else None,
    }
    cfg["tune"].update(storage_path=str(storage), verbose=0)
    cpu0, t0 = machine_cpu_seconds(), time.perf_counter()
    out = search(cfg)
    wall, cpu1 = time.perf_counter() - t0, machine_cpu_seconds()
    return {
        "wall_s": wall,
        "machine_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "winner_t_neg": out.best.values["objective.hparams.t_neg"] if out.best else None,
        "winner_final_knn": out.best.final if out.best else None,
        "epochs_run": sum(r.epochs for r in out.rows),
        "trials": [
            {
                "t_neg": r.values["objective.hparams.t_neg"],
                "final": r.final,
                "epochs": r.epochs,
                "status": r.status,
            }
            for r in out.rows
        ],
    }


def fitted_costs(runs: dict[str, list[dict]]) -> dict[str, float] | None:
    """Machine CPU-seconds per trial (fixed) and per trial-epoch, solved from the two modes' medians.

    ``cpu = trials x fixed + trial_epochs x per_epoch`` for the full grid and for ASHA: two
    equations, two unknowns. ``None`` without CPU readings or when both ran the same epochs.
    """
    med = {}
    for mode, reps in runs.items():
        if any(r.get("machine_cpu_s") is None for r in reps):
            return None
        med[mode] = (
            statistics.median(r["machine_cpu_s"] for r in reps),
            statistics.median(r["epochs_run"] for r in reps),
        )
    (cpu_f, ep_f), (cpu_a, ep_a) = med["full"], med["asha"]
    if ep_f == ep_a:
        return None
    per_epoch = (cpu_f - cpu_a) / (ep_f - ep_a)
    return {"per_trial_s": (cpu_f - ep_f * per_epoch) / len(GRID), "per_epoch_s": per_epoch}


def main() -> None:
    """Run both modes ``--repeats`` times, print the ratio and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--order", choices=("shuffled", "ascending"), default="shuffled")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "tune.json")
    args = parser.parse_args()
    import ray

    from pipelines.ray_session import connect

    connect(None)
    ray.data.DataContext.get_current().enable_progress_bars = False
    grid = grid_order(args.order)
    print(f"grid order ({args.order}): {grid}", flush=True)
    runs: dict[str, list[dict]] = {"full": [], "asha": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for mode in ("full", "asha"):
                r = grid_search(
                    mode == "asha",
                    pathlib.Path(tmp) / f"{mode}{rep}",
                    args.epochs,
                    args.images,
                    args.reduction_factor,
                    grid,
                )
                runs[mode].append(r)
                print(
                    f"{mode:4s} rep {rep + 1}: {r['wall_s']:.0f}s, {r['epochs_run']} trial-epochs, "
                    f"winner t_neg={r['winner_t_neg']} (kNN {r['winner_final_knn']:.2f})",
                    flush=True,
                )
    full = statistics.median(r["wall_s"] for r in runs["full"])
    asha = statistics.median(r["wall_s"] for r in runs["asha"])
    same = [a["winner_t_neg"] == f["winner_t_neg"] for a, f in zip(runs["asha"], runs["full"], strict=True)]
    ratio = full / asha
    costs = fitted_costs(runs)
    print(f"\ngrid of {len(GRID)} t_neg values x {args.epochs} epochs, {args.images} images per trial")
    print(f"run to completion: {full:.0f}s   ASHA: {asha:.0f}s   speed-up {ratio:.2f}x (target {TARGET}x)")
    print(f"same winner: {all(same)} ({sum(same)}/{len(same)} repetitions)")
    if costs:
        print(
            f"machine CPU-seconds: {costs['per_trial_s']:.0f} fixed per trial, "
            f"{costs['per_epoch_s']:.1f} per trial-epoch (a rough fit from the two modes)"
        )
    result = {
        "benchmark": "tune_asha_vs_full_grid",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": ray.cluster_resources().get("CPU"), "python": platform.python_version()},
        "grid": {"objective.hparams.t_neg": grid},
        "order": {"name": args.order, "seed": ORDER_SEED if args.order == "shuffled" else None},
        "epochs": args.epochs,
        "images": args.images,
        "asha": {"grace_period": 1, "reduction_factor": args.reduction_factor},
        "repeats": args.repeats,
        "median_wall_s": {"full": full, "asha": asha},
        "speedup": ratio,
        "target_speedup": TARGET,
        "meets_target": bool(ratio >= TARGET and all(same)),
        "same_winner": all(same),
        "fitted_machine_cpu_s": costs,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
