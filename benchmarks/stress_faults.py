"""Stress mode for the fault tests: the node-loss, worker-kill and driver-kill tests, many rounds in
a row, beside CPU-bound load. Not part of ``make test``.

    python benchmarks/stress_faults.py                      # 10 rounds, 1 busy process beside them
    python benchmarks/stress_faults.py --rounds 3 --burners 2

Each round is one ``pytest`` run of the three tests (they share the fault suite's reference run),
so every round starts its own Ray clusters. The load is ``--burners`` processes spinning on a
core each for the whole time. A failed round keeps its pytest output (and, for the node-loss
test, the Ray logs it names) under ``--keep``. Prints a table and writes
``benchmarks/results/stress_faults.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform as host
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = {
    "node_loss": "test_losing_a_node_mid_run_recovers_on_the_nodes_left",
    "worker_kill": "test_a_worker_killed_right_after_a_mid_epoch_checkpoint_resumes_from_it",
    "driver_kill": "test_the_driver_killed_and_the_command_rerun_resumes_past_torn_checkpoints",
}


def burn() -> None:
    """Keep one core busy until killed."""
    x = 0
    while True:
        x = (x * 31 + 7) % 1_000_003


def passed_tests(report: Path) -> dict[str, bool]:
    """Which of :data:`TESTS` passed, from pytest's JUnit XML report (missing: not passed)."""
    passed = dict.fromkeys(TESTS, False)
    if not report.exists():
        return passed
    for case in ET.parse(report).getroot().iter("testcase"):
        for short, name in TESTS.items():
            if case.get("name") == name:
                passed[short] = not any(child.tag in ("failure", "error", "skipped") for child in case)
    return passed


def one_round(keep: Path, index: int) -> dict:
    """Run the three tests once; which passed, and the round's wall time."""
    report = keep / f"round{index:02d}.xml"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "tests/integration/test_faults.py",
            "-k",
            " or ".join(TESTS.values()),
            f"--basetemp={keep / f'round{index:02d}'}",
        ],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    outcome = passed_tests(report)
    if proc.returncode != 0:
        (keep / f"round{index:02d}.log").write_text(proc.stdout + proc.stderr)
    return {"round": index, "seconds": round(seconds, 1), "passed": outcome, "exit": proc.returncode}


def write_result(args: argparse.Namespace, rounds: list[dict]) -> dict[str, int]:
    """Write the JSON result of the rounds run so far; the passes per test."""
    totals = {k: sum(r["passed"][k] for r in rounds) for k in TESTS}
    result = {
        "command": f"python benchmarks/stress_faults.py --rounds {args.rounds} --burners {args.burners}",
        "machine": f"{os.cpu_count()} CPUs, {host.machine()}",
        "burners": args.burners,
        "beside": args.beside,
        "rounds_asked": args.rounds,
        "rounds": rounds,
        "passed": totals,
        "all_passed": bool(rounds) and all(n == len(rounds) for n in totals.values()),
        "median_round_s": sorted(r["seconds"] for r in rounds)[len(rounds) // 2] if rounds else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burners", type=int, default=1, help="CPU-bound processes beside the tests")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/cacr-stress-faults"))
    parser.add_argument("--beside", default="", help="other load on the machine, for the record")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stress_faults.json")
    args = parser.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    burners = [mp.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    rounds: list[dict] = []
    try:
        for i in range(1, args.rounds + 1):
            rounds.append(one_round(args.keep, i))
            r = rounds[-1]
            marks = "  ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in r["passed"].items())
            print(f"round {i:2d}/{args.rounds}: {marks}  ({r['seconds']:.0f} s)", flush=True)
            write_result(args, rounds)  # after every round: an interrupted stress keeps what it ran
    finally:
        for b in burners:
            b.terminate()
    totals = write_result(args, rounds)
    print(f"\n{'test':<12} {'passed':>8}")
    for k, n in totals.items():
        print(f"{k:<12} {n:>4}/{len(rounds):<3}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
