"""Forward + backward time of every objective at the paper's scales, as ratios to InfoNCE.

In-batch objectives (B = 128, D = 128) are compared with ``infonce_inbatch``; queue objectives
(B = 256, Q = 65536, D = 128) with ``infonce_queue``; both baselines are timed in the same run.
"per view" divides each time by the number of query views the objective encodes (InfoNCE
in-batch: 2, InfoNCE queue: 1, CACR: K + 1), which is the fair comparison at K = 4 where CACR
sees 5 views per image. Writes a JSON result and prints a table.

    python benchmarks/objectives.py                 # paper scales, writes benchmarks/results/objectives.json
    python benchmarks/objectives.py --quick         # small queue, 3 repetitions, prints only
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

# `python benchmarks/objectives.py` puts benchmarks/ first on sys.path, where this very file
# would shadow the `objectives` package it measures.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).parent]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import objectives  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = 1.3


def time_once(loss_fn, inputs, device) -> float:
    leaves = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss_fn(*leaves).loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(loss_fn, inputs, device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        time_once(loss_fn, inputs, device)
    return statistics.median(time_once(loss_fn, inputs, device) for _ in range(reps))


def unit(*shape, device, grad=True):
    x = F.normalize(torch.randn(*shape, device=device), dim=-1)
    return x.requires_grad_(grad)


def cases(B_in: int, B_q: int, Q: int, D: int, device):
    """(group, label, name, hparams, inputs, query views, K) for every measured configuration."""
    out = []
    for K in (1, 4):
        V = K + 1
        views = unit(V, B_in, D, device=device)
        out.append(
            ("inbatch", f"cacr_inbatch K={K}", "cacr_inbatch", dict(t_pos=1.0, t_neg=0.9), [views], V, K)
        )
        out.append(
            (
                "inbatch",
                f"cacr_moco_v3 rbf V={V}",
                "cacr_moco_v3",
                dict(temperature=1.0),
                [views, unit(V, B_in, D, device=device, grad=False)],
                V,
                K,
            )
        )
    two = unit(2, B_in, D, device=device)
    out.append(("inbatch", "infonce_inbatch", "infonce_inbatch", dict(tau=0.19), [two], 2, None))
    out.append(("inbatch", "align_uniform_inbatch", "align_uniform_inbatch", dict(), [two], 2, None))
    out.append(("inbatch", "hard_negative_inbatch", "hard_negative_inbatch", dict(), [two], 2, None))
    queue = unit(Q, D, device=device, grad=False)
    for K in (1, 4):
        V = K + 1
        q, k = unit(V, B_q, D, device=device), unit(V, B_q, D, device=device, grad=False)
        for cache in (False, True):
            label = f"cacr_moco_v2 K={K}" + (" official cache" if cache else "")
            out.append(
                (
                    "queue",
                    label,
                    "cacr_moco_v2",
                    dict(t_pos=1.0, t_neg=2.0, official_queue_cache=cache),
                    [q, k, queue],
                    V,
                    K,
                )
            )
    q1, k1 = unit(B_q, D, device=device), unit(B_q, D, device=device, grad=False)
    out.append(("queue", "infonce_queue", "infonce_queue", dict(tau=0.2), [q1, k1, queue], 1, None))
    out.append(("queue", "align_uniform_queue", "align_uniform_queue", dict(), [q1, k1, queue], 1, None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Q = 8192 and 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON result path")
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 7)
    Q = 8192 if args.quick else 65536
    out_path = args.out or (None if args.quick else ROOT / "benchmarks/results/objectives.json")
    torch.manual_seed(0)

    rows = []
    for group, label, name, hp, inputs, views, K in cases(128, 256, Q, 128, device):
        seconds = median_time(objectives.build(name, **hp), inputs, device, reps)
        rows.append(
            dict(
                group=group,
                label=label,
                objective=name,
                hparams=hp,
                K=K,
                query_views=views,
                median_ms=seconds * 1e3,
            )
        )
        print(f"  timed {label:<36} {seconds * 1e3:9.2f} ms", flush=True)
    base = {r["group"]: r for r in rows if r["objective"] in ("infonce_inbatch", "infonce_queue")}
    for r in rows:
        b = base[r["group"]]
        r["ratio"] = r["median_ms"] / b["median_ms"]
        r["ratio_per_view"] = (r["median_ms"] / r["query_views"]) / (b["median_ms"] / b["query_views"])
        if r["objective"].startswith("cacr") and r["K"] is not None and not args.quick:
            r["target"] = "ratio <= 1.3" if r["K"] == 1 else "ratio_per_view <= 1.3"
            r["meets_target"] = (r["ratio"] if r["K"] == 1 else r["ratio_per_view"]) <= TARGET

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    print(
        f"\nforward+backward, median of {reps}, device {device.type} ({device_name}), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"in-batch: B=128 D=128 vs infonce_inbatch; queue: B=256 Q={Q} D=128 vs infonce_queue")
    if args.quick:
        print("(quick: a small queue; the targets are judged at the paper's Q = 65536 without --quick)")
    print()
    print(f"| {'objective':<36} | {'ms':>9} | {'x InfoNCE':>9} | {'x per view':>10} | target |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 11}|{'-' * 12}|--------|")
    for r in rows:
        verdict = {True: "met", False: "MISSED"}.get(r.get("meets_target"), "")
        print(
            f"| {r['label']:<36} | {r['median_ms']:9.2f} | {r['ratio']:9.2f} | "
            f"{r['ratio_per_view']:10.2f} | {verdict:<6} |"
        )
    result = dict(
        benchmark="objectives",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        device=device.type,
        device_name=device_name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        reps=reps,
        B_inbatch=128,
        B_queue=256,
        Q=Q,
        D=128,
        target=TARGET,
        rows=rows,
    )
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
