"""Ray Train's own cost: our training step under Ray Train against a plain torch.distributed loop.

    python benchmarks/train_overhead.py                   # 2 processes, demo model, 3 rounds
    python benchmarks/train_overhead.py --ray-env RAY_TRAIN_METRICS_ENABLED=0   # + Ray with that set

Both sides run the same step (the demo preset's framework and objective, DDP over gloo, SGD) on
the same in-memory uint8 views, with one thread per process and the trainer's memory layout
(channels-last for the demo's SmallAlexNet, as ``trainer.channels_last: auto`` on a CPU), for the same
number of steps:
* **plain**: ``torch.multiprocessing`` spawns 2 processes that form a gloo group themselves;
* **ray**: a ``TorchTrainer`` with 2 workers (1 CPU each) runs the step function as its
  ``train_loop_per_worker`` on a local cluster started for the round, with the project's Ray
  Train setting (no PreemptionWatcher, as ``trainer.preemption_watcher: false``).
Steps/s are timed inside the loop after a warm-up, on rank 0. For Ray the time from ``fit()`` to
the first step is split into the cluster's start (``ray.init``), the worker group's start (until
the loop function begins) and the model build. ``--ray-env KEY=VALUE`` (repeatable) adds a third
arm each round: the Ray side again with those environment variables set for its cluster (Ray's
and Ray Train's settings), to measure a setting against Ray's defaults in the same rounds. Prints
the median of the rounds and writes ``benchmarks/results/train_overhead.json``.
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
from pipelines.ray_session import PREEMPTION_WATCHER_ENV  # noqa: E402


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
    from pipelines.training.pretrainer import channels_last_for

    t_build = time.time()
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    framework = build_framework(cfg, distributed=world > 1)
    if channels_last_for(cfg["trainer"]["channels_last"], cfg["model"]["name"], on_gpu=False):
        framework.use_channels_last()  # as the trainer lays it out
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


def ray_round(cfg: dict, args: dict, env: dict[str, str] | None = None) -> dict:
    """One Ray Train round on a local cluster of its own, started with ``env`` set (then restored)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
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
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        **result,
        "cluster_start_s": t_fit - t_init,
        "worker_group_start_s": result["loop_began_at"] - t_fit,
        "fit_to_first_step_s": result["first_step_at"] - t_fit,
    }


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict; a pair without ``=`` is an error naming it."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ray-env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="images per worker per step")
    parser.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add an arm: the Ray round with this environment variable set (repeatable)",
    )
    a = parser.parse_args()
    env = parse_env(a.ray_env)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = demo_config()
    args = {"steps": a.steps, "warmup": a.warmup, "batch": a.batch}
    ours = {PREEMPTION_WATCHER_ENV: "0"}  # what a run sets by default (trainer.preemption_watcher=false)
    arms = {"plain": plain_round, "ray": lambda c, x: ray_round(c, x, ours)}
    if env:
        arms["ray_env"] = lambda c, x: ray_round(c, x, ours | env)
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for r in range(a.rounds):
        for name, one_round in arms.items():
            with CpuSampler() as cpu:
                runs[name].append(one_round(cfg, args))
            runs[name][-1]["cpu_s_in_timed_steps"] = used = cpu.used(*runs[name][-1]["timed_window"])
            print(f"  {name}: CPU seconds during the timed steps: {used}")
        base = runs["plain"][-1]["steps_per_s"]
        done = ", ".join(
            f"{n} {v[-1]['steps_per_s']:.2f} ({v[-1]['steps_per_s'] / base:.3f}x)" for n, v in runs.items()
        )
        print(f"round {r + 1} (steps/s): {done}")
    med = statistics.median
    speed = {name: med(x["steps_per_s"] for x in v) for name, v in runs.items()}
    ratios = {
        name: [y["steps_per_s"] / x["steps_per_s"] for x, y in zip(runs["plain"], v, strict=True)]
        for name, v in runs.items()
        if name != "plain"
    }
    keys = ("cluster_start_s", "worker_group_start_s", "build_s", "fit_to_first_step_s")
    breakdown = {k: med(x[k] for x in runs["ray"]) for k in keys}
    print(f"\nsteps/s (median of {a.rounds}): plain torch.distributed {speed['plain']:.2f}")
    for name, per_round in ratios.items():
        label = f"Ray Train with {env}" if name == "ray_env" else "Ray Train"
        print(
            f"  {label}: {speed[name]:.2f} ({speed[name] / speed['plain']:.3f}x; "
            f"median of per-round ratios {med(per_round):.3f}x; rounds "
            + ", ".join(f"{x:.3f}" for x in per_round)
            + ")"
        )
    print(
        "Ray: cluster start {cluster_start_s:.1f} s; fit() to the loop {worker_group_start_s:.1f} s; "
        "model build {build_s:.2f} s; fit() to the first step {fit_to_first_step_s:.1f} s".format(**breakdown)
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/train_overhead.py " + " ".join(sys.argv[1:]),
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
            "ray_env": env,
        },
        "plain_steps_per_s": speed["plain"],
        "ray_steps_per_s": speed["ray"],
        "ratio_ray_over_plain": speed["ray"] / speed["plain"],
        "ratios_per_round": ratios["ray"],
        "ray_start_breakdown_s": breakdown,
        "rounds": runs,
    }
    if env:
        result["ray_env_steps_per_s"] = speed["ray_env"]
        result["ratio_ray_env_over_plain"] = speed["ray_env"] / speed["plain"]
        result["ray_env_ratios_per_round"] = ratios["ray_env"]
    out = ROOT / "benchmarks" / "results" / "train_overhead.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
