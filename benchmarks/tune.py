"""Ray Tune with ASHA against the same grid run to completion, in one run: wall time and winner.

A fixed grid of 8 CACR repulsion temperatures (``objective.hparams.t_neg``, from far too sharp
to the paper's range) on the bundled CIFAR-10 sample (800 images per trial, SmallAlexNet at 1/8
width, K = 2, 27 epochs, one 0.45-CPU worker per trial, 2 trials at a time): first every trial to
the end (FIFO, the baseline), then the same grid with ASHA (grace 1 epoch, reduction factor 3:
rungs at 1, 3, 9 and 27 epochs). A trial carries about 70 s of fixed cost here (Tune, Train and
Ray Data actors starting, evaluation), so the grid needs enough epochs for early stopping to
matter; at 8 epochs and reduction factor 4 ASHA was 0.96x, at 27 epochs and factor 3 1.83x.
Both pick the trial with the highest final kNN top-1 among those that ran all epochs. Target:
ASHA at least 2x faster with the same winner. Writes ``benchmarks/results/tune.json``.

    python benchmarks/tune.py                 # 1 repetition of each (about 21 minutes on 2 cores)
    python benchmarks/tune.py --repeats 3     # the median of 3 of each
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

GRID = [0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.9]
TARGET = 2.0


def grid_search(asha: bool, storage: pathlib.Path, epochs: int, images: int, factor: int) -> dict:
    """One search of the grid; wall time, winner and trial epochs."""
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
        "params": {"objective.hparams.t_neg": {"grid": GRID}},
        "num_samples": 1,
        "asha": {"grace_period": 1, "reduction_factor": factor} if asha else None,
    }
    cfg["tune"].update(storage_path=str(storage), verbose=0)
    t0 = time.perf_counter()
    out = search(cfg)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
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


def main() -> None:
    """Run both modes ``--repeats`` times, print the ratio and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "tune.json")
    args = parser.parse_args()
    import ray

    from pipelines.ray_session import connect

    connect(None)
    ray.data.DataContext.get_current().enable_progress_bars = False
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
    print(f"\ngrid of {len(GRID)} t_neg values x {args.epochs} epochs, {args.images} images per trial")
    print(f"run to completion: {full:.0f}s   ASHA: {asha:.0f}s   speed-up {ratio:.2f}x (target {TARGET}x)")
    print(f"same winner: {all(same)} ({sum(same)}/{len(same)} repetitions)")
    result = {
        "benchmark": "tune_asha_vs_full_grid",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": ray.cluster_resources().get("CPU"), "python": platform.python_version()},
        "grid": {"objective.hparams.t_neg": GRID},
        "epochs": args.epochs,
        "images": args.images,
        "asha": {"grace_period": 1, "reduction_factor": args.reduction_factor},
        "repeats": args.repeats,
        "median_wall_s": {"full": full, "asha": asha},
        "speedup": ratio,
        "target_speedup": TARGET,
        "meets_target": bool(ratio >= TARGET and all(same)),
        "same_winner": all(same),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
