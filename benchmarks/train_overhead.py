"""Ray Train's own cost: our training step under Ray Train against a plain torch.distributed loop.

    python benchmarks/train_overhead.py                   # 2 processes, demo model, 3 rounds

Both sides run the same step (the demo preset's framework and objective, DDP over gloo, SGD) on
the same in-memory uint8 views, with one thread per process, for the same number of steps:
* **plain**: ``torch.multiprocessing`` spawns 2 processes that form a gloo group themselves;
* **ray**: a ``TorchTrainer`` with 2 workers (1 CPU each) runs the step function as its
  ``train_loop_per_worker`` on a local cluster started for the round.
Steps/s are timed inside the loop after a warm-up, on rank 0. For Ray the time from ``fit()`` to
the first step is split into the cluster's start (``ray.init``), the worker group's start (until
the loop function begins) and the model build. Prints the median of the rounds and writes
``benchmarks/results/train_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_sampler import CpuSampler  # noqa: E402


def demo_config() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.core.config_schema import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose("pretrain", overrides=["experiment=demo"]), resolve=True)


def step_loop(cfg: dict, steps: int, warmup: int, batch: int) -> dict:
    """Build the framework under DDP and time ``steps`` optimizer steps after ``warmup`` ones."""
    from pipelines.models.build import build_framework

    t_build = time.time()
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    framework = build_framework(cfg, distributed=world > 1)
    framework.use_online(torch.nn.parallel.DistributedDataParallel(framework.online))
    optimizer = torch.optim.SGD(framework.online.parameters(), lr=0.05, momentum=0.9)
    views = int(cfg["objective"]["K"]) + 1
    gen = torch.Generator().manual_seed(rank)
    data = torch.randint(0, 256, (4, batch, views, 3, 32, 32), dtype=torch.uint8, generator=gen)
    built = time.time()
    t0 = None
    first = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x = data[i % 4].float().div_(255.0).sub_(0.5)
        loss = framework(x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if first is None:
            first = time.time()
    elapsed = time.perf_counter() - t0
    return {
        "timed_window": [time.time() - elapsed, time.time()],
        "steps_per_s": steps / elapsed,
        "build_s": built - t_build,
        "first_step_at": first,
        "loop_began_at": t_build,
    }


def _plain_worker(rank: int, world: int, init: str, cfg: dict, args: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        result = step_loop(cfg, args["steps"], args["warmup"], args["batch"])
        if rank == 0:
            pathlib.Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def plain_round(cfg: dict, args: dict) -> dict:
    folder = pathlib.Path(tempfile.mkdtemp())
    mp.spawn(
        _plain_worker,
        args=(2, str(folder / "init"), cfg, args, str(folder / "out.json")),
        nprocs=2,
        join=True,
    )
    return json.loads((folder / "out.json").read_text())


def _ray_loop(config: dict) -> dict:
    return step_loop(config["cfg"], config["steps"], config["warmup"], config["batch"])


def ray_round(cfg: dict, args: dict) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t_init = time.time()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    t_fit = time.time()
    try:
        trainer = TorchTrainer(
            _ray_loop,
            train_loop_config={"cfg": cfg, **args},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=tempfile.mkdtemp(), name="overhead"),
        )
        result = trainer.fit().return_value
    finally:
        ray.shutdown()
    return {
        **result,
        "cluster_start_s": t_fit - t_init,
        "worker_group_start_s": result["loop_began_at"] - t_fit,
        "fit_to_first_step_s": result["first_step_at"] - t_fit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="images per worker per step")
    a = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = demo_config()
    args = {"steps": a.steps, "warmup": a.warmup, "batch": a.batch}
    plain, ray_runs = [], []
    for r in range(a.rounds):
        for runs, one_round in ((plain, plain_round), (ray_runs, ray_round)):
            with CpuSampler() as cpu:
                runs.append(one_round(cfg, args))
            runs[-1]["cpu_s_in_timed_steps"] = cpu.used(*runs[-1]["timed_window"])
            used = runs[-1]["cpu_s_in_timed_steps"]
            print(f"  {one_round.__name__}: CPU seconds during the timed steps: {used}")
        ratio = ray_runs[-1]["steps_per_s"] / plain[-1]["steps_per_s"]
        done = f"plain {plain[-1]['steps_per_s']:.2f} steps/s, ray {ray_runs[-1]['steps_per_s']:.2f}"
        print(f"round {r + 1}: {done} ({ratio:.3f}x)")
    med = statistics.median
    p, q = med(x["steps_per_s"] for x in plain), med(x["steps_per_s"] for x in ray_runs)
    ratios = [y["steps_per_s"] / x["steps_per_s"] for x, y in zip(plain, ray_runs, strict=True)]
    keys = ("cluster_start_s", "worker_group_start_s", "build_s", "fit_to_first_step_s")
    breakdown = {k: med(x[k] for x in ray_runs) for k in keys}
    print(
        f"\nsteps/s (median of {a.rounds}): plain torch.distributed {p:.2f}, Ray Train {q:.2f}: {q / p:.3f}x"
    )
    print("  per round: " + ", ".join(f"{x:.3f}" for x in ratios))
    print(
        "Ray: cluster start {cluster_start_s:.1f} s; fit() to the loop {worker_group_start_s:.1f} s; "
        "model build {build_s:.2f} s; fit() to the first step {fit_to_first_step_s:.1f} s".format(**breakdown)
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/train_overhead.py",
        "machine": f"{os.cpu_count()} CPUs",
        "setting": {
            "model": cfg["model"]["name"],
            "width": cfg["model"]["width"],
            "objective": cfg["objective"]["name"],
            "K": cfg["objective"]["K"],
            "batch_per_worker": a.batch,
            "workers": 2,
            "threads_per_process": 1,
            "steps": a.steps,
        },
        "plain_steps_per_s": p,
        "ray_steps_per_s": q,
        "ratio_ray_over_plain": q / p,
        "ratios_per_round": ratios,
        "ray_start_breakdown_s": breakdown,
        "rounds": {"plain": plain, "ray": ray_runs},
    }
    out = ROOT / "benchmarks" / "results" / "train_overhead.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
