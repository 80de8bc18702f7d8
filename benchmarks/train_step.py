"""One training step's two costs on one CPU thread: photometric augmentation and the model's step.

    python benchmarks/train_step.py              # 5 rounds, writes benchmarks/results/train_step.json
    python benchmarks/train_step.py --rounds 3 --out /tmp/step.json

Each round measures every case, its baseline arm then the other, so that a machine's drift over
the rounds hits both arms alike:

* **photometric**: the demo's augmentation (the ``cifar`` recipe, K + 1 = 5 views of 32 px) on one
  worker's share of a batch, as :class:`~pipelines.data.augment.Photometric` runs it (views that
  share a recipe in one batch) against one call per view (how it ran before, the baseline);
* **step**: forward, backward and SGD step of the demo framework (SmallAlexNet 1/8, CACR K = 4,
  joint pass) and of a CIFAR ResNet-18 (CACR K = 4, per-view passes, 4 images), in PyTorch's usual
  (contiguous) layout, the baseline, against channels-last (``trainer.channels_last``, on by
  default for convolutional backbones).

Prints the median time of each arm and its ratio to the baseline; the JSON keeps every round.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data.augment import Photometric  # noqa: E402
from pipelines.data.recipes import MEAN_STD, view_recipes  # noqa: E402
from pipelines.models.build import build_framework  # noqa: E402
from pipelines.search.trial import compose_pretrain  # noqa: E402

VIEWS = 5


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def photometric_arms(batch: int, repeats: int) -> dict[str, float]:
    """Grouped (as trained) against one call per view, for ``batch`` images of 5 views."""
    mean, std = MEAN_STD["cifar10"]
    recipes = view_recipes("cifar", VIEWS)
    grouped = Photometric(recipes, mean, std)
    single = Photometric(recipes[:1], mean, std)
    views = torch.randint(0, 256, (batch, VIEWS, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)

    def per_view() -> torch.Tensor:
        return torch.cat([single(views[:, v : v + 1], gen)[0] for v in range(VIEWS)], 1)

    with torch.no_grad():
        return {
            "per_view_calls": timed(per_view, repeats),
            "grouped": timed(lambda: grouped(views, gen), repeats),
        }


def sgd_step(framework: torch.nn.Module, optimizer: torch.optim.Optimizer, views: torch.Tensor) -> None:
    """Forward, backward and one optimizer step."""
    loss = framework(views).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_arms(overrides: list[str], batch: int, repeats: int) -> dict[str, float]:
    """One SGD step of the framework ``overrides`` compose, contiguous against channels-last."""
    cfg = compose_pretrain(str(ROOT / "configs"), overrides, str(ROOT))
    views = torch.randn(batch, VIEWS, 3, 32, 32)
    out = {}
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        framework = build_framework(cfg, distributed=False)
        if layout == "channels_last":
            framework.use_channels_last()
        optimizer = torch.optim.SGD(framework.online.parameters(), lr=0.01, momentum=0.9)

        out[layout] = timed(functools.partial(sgd_step, framework, optimizer, views), repeats)
    return out


CASES = {
    "photometric, demo (64 images x 5 views)": lambda r: photometric_arms(64, r),
    "photometric, 32 images x 5 views": lambda r: photometric_arms(32, r),
    "step, demo SmallAlexNet 1/8 (64 images)": lambda r: step_arms(["experiment=demo"], 64, r),
    "step, SmallAlexNet 1/8 (32 images)": lambda r: step_arms(["experiment=demo"], 32, r),
    "step, ResNet-18 CIFAR (4 images, per view)": lambda r: step_arms(
        [
            "experiment=demo",
            "model=resnet18",
            "model.width=1.0",
            "model.image_size=32",
            "framework.forward=per_view",
        ],
        4,
        r,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per arm and round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/train_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each of the demo's two workers
    rounds: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for case, run in CASES.items():
            rounds[case].append(run(args.repeats))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    summary = {}
    print(f"\n{'case':46s} {'arm':16s} {'median ms':>10s} {'x baseline':>10s}")
    for case, results in rounds.items():
        arms = list(results[0])
        base = statistics.median(x[arms[0]] for x in results)
        summary[case] = {}
        for arm in arms:
            med = statistics.median(x[arm] for x in results)
            summary[case][arm] = {"median_ms": round(med * 1000, 2), "time_vs_baseline": round(med / base, 3)}
            print(f"{case:46s} {arm:16s} {med * 1000:10.1f} {med / base:10.3f}")
    result = {
        "benchmark": "train_step",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "torch": torch.__version__,
        },
        "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:]),
        "summary": summary,
        "rounds_s": rounds,
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
