"""Fault tolerance proven with real processes on the local Ray cluster.

Each test prints what it injected and what it observed (``pytest -s`` shows it). Runs use one
Train worker where losses are compared: Ray Data hands blocks to several workers as they ask, so
only a single worker sees the same batches in the same order on every run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipelines.core import checkpoints as ckpt
from pipelines.core.errors import ConfigError
from pipelines.training.run import RunStoppedError, pretrain
from tests.helpers.data_fixtures import corrupt_cases, encode, pattern
from tests.helpers.runs import (
    ROOT,
    jsonl,
    smoke,
    step_losses,
    wait_for,
    wait_until_free,
    watchers,
    worker_pid,
)

# Measured here under load (the stress mode beside a CPU burner and other tests): the worker-kill
# and driver-kill tests took up to 290 s each, the node-loss test up to 380 s; the limits leave room
# for a machine twice as slow under the same load.
pytestmark = pytest.mark.timeout(900)

# 256 images, 1 worker x 32: 8 steps per epoch, 2 epochs; checkpoints at steps 3, 6, 8 (epoch), 9, ...
FAULT = [
    "trainer.num_workers=1",
    "trainer.checkpoint_every_steps=3",
    "trainer.log_every_steps=1",
    "trainer.max_failures=1",
    "eval.knn_every_epochs=0",
    "eval.final_linear_probe=false",
    "eval.random_init_baseline=false",
]
STEPS = 16


def checkpoint_dir(run_dir: Path, epoch: int, step: int) -> Path:
    return run_dir / f"checkpoint_e{epoch:04d}_s{step:08d}"


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory) -> Path:
    """The folder of the same run without any fault."""
    out = pretrain(smoke(tmp_path_factory.mktemp("reference"), "trainer.name=reference", *FAULT))
    assert sorted(step_losses(Path(out.run_dir))) == list(range(1, STEPS + 1))
    return Path(out.run_dir)


def assert_same_losses_after(run_dir: Path, reference: Path, step: int) -> None:
    losses, expected = step_losses(run_dir), step_losses(reference)  # each fails on a step logged twice
    assert sorted(losses) == list(range(1, STEPS + 1))
    after = {s: losses[s] for s in losses if s > step}
    print(f"observed: losses after step {step}: {[round(v, 5) for v in after.values()]}")
    assert after == pytest.approx({s: expected[s] for s in after}, rel=1e-4, abs=1e-5)


def test_a_run_stopped_after_epoch_one_and_rerun_ends_with_the_uninterrupted_weights(
    ray_cluster, tmp_path, reference
) -> None:
    seen = watchers()
    part = pretrain(
        smoke(
            tmp_path,
            "trainer.name=resumed",
            "trainer.stop_at_epoch=1",
            "trainer.preemption_watcher=true",
            *FAULT,
        )
    )
    assert part.results == {}  # stopped after epoch 1: no final evaluation yet
    assert watchers() == seen + 1  # asked for: Ray Train's PreemptionWatcher ran
    other = tmp_path / "other-data"  # the data may move (a new dataset.root), not change
    shutil.copytree(ROOT / "data" / "cifar10-sample", other)
    (other / "classes.txt").write_text("".join(f"kind {i}\n" for i in range(10)))
    with pytest.raises(ConfigError) as refused:
        pretrain(smoke(tmp_path, "trainer.name=resumed", f"dataset.root={other}", *FAULT))
    print(f"observed: {refused.value}")
    assert str(refused.value).startswith(
        f"run 'resumed' trained on other data than dataset.root={other} holds: classes [airplane, "
    )
    assert "[kind 0, kind 1, kind 2, kind 3, kind 4, kind 5, ...] (10) here" in str(refused.value)
    again = pretrain(smoke(tmp_path, "trainer.name=resumed", *FAULT))  # the same command without the stop
    assert watchers() == seen + 1  # the default (and a setting a resumed run may change): none
    run_dir = Path(again.run_dir)
    resumes = jsonl(run_dir / "resumes.jsonl")
    print(f"observed: resumes {resumes}")
    assert [(r["epoch"], r["step"], r["source"]) for r in resumes] == [(1, 8, "ray")]
    done, straight = (ckpt.read_checkpoint(checkpoint_dir(d, 2, STEPS)) for d in (run_dir, reference))
    for k, v in straight["model"].items():
        torch.testing.assert_close(done["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    lrs = [  # per step
        {r["step"]: r["lr"] for r in jsonl(d / "metrics.jsonl") if "lr" in r} for d in (run_dir, reference)
    ]
    assert lrs[0] == pytest.approx(lrs[1]) and len(lrs[0]) == STEPS  # the schedule went on where it stopped
    assert_same_losses_after(run_dir, reference, 8)
    assert again.results["pretrained"]["knn_top1"] > 0


def test_a_worker_killed_right_after_a_mid_epoch_checkpoint_resumes_from_it(
    ray_cluster, tmp_path, reference
) -> None:
    """SIGKILL within milliseconds of a checkpoint report: Ray may not have registered it yet."""
    run_dir = tmp_path / "killed"
    target = checkpoint_dir(run_dir, 0, 6)  # step 6 of the 8 in epoch 1
    killed: dict[str, int] = {}

    def kill() -> None:
        wait_for(lambda: ckpt.is_complete(target), 300, f"{target.name} in storage", every=0.005)
        killed["pid"] = pid = worker_pid(run_dir)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    out = pretrain(smoke(tmp_path, "trainer.name=killed", *FAULT))
    killer.join(5)
    print(f"injected: SIGKILL to the Train worker (pid {killed['pid']}) as {target.name} landed in storage")
    resumes = jsonl(run_dir / "resumes.jsonl")
    print(f"observed: resumes {resumes}")
    assert len(resumes) == 1 and (resumes[0]["epoch"], resumes[0]["step"]) == (0, 6)
    assert resumes[0]["checkpoint"].endswith(target.name)
    assert {r["pid"] for r in jsonl(run_dir / "workers.jsonl")} - {killed["pid"]}  # a new process
    assert_same_losses_after(run_dir, reference, 6)
    assert ckpt.read_checkpoint(checkpoint_dir(run_dir, 2, STEPS))["step"] == STEPS
    assert out.results["pretrained"]["knn_top1"] > 0


def write_torn_checkpoint(folder: Path) -> None:
    """Start a real process writing a large checkpoint into ``folder``; the kernel kills it mid-write.

    Its file-size limit (8 MB) makes the kernel send SIGXFSZ at the same byte of ``state.pt`` every
    run: a SIGKILL sent from here once the file had grown could come after the writer finished on
    a busy machine.
    """
    limit = 8_000_000
    code = (
        "import resource, signal, sys, torch\n"
        "from pipelines.core.checkpoints import write_checkpoint\n"
        "big = {'epoch': 1, 'step': 12, 'model': {'w': torch.zeros(100_000_000)}}\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default ends the process\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        "write_checkpoint(sys.argv[1], big, {'w': torch.zeros(1)})\n"
    )
    writer = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, timeout=120)
    assert writer.returncode == -signal.SIGXFSZ, writer.returncode
    written = [p.stat().st_size for p in folder.glob(ckpt.STATE + ".tmp*")]  # state.pt.tmp-<id>
    assert written == [limit], written
    print(f"injected: a checkpoint writer killed (SIGXFSZ) after {limit:,} bytes of state.pt")


def test_the_driver_killed_and_the_command_rerun_resumes_past_torn_checkpoints(
    ray_cluster, tmp_path, reference
) -> None:
    run_dir = tmp_path / "driver"
    command = [
        sys.executable,
        "pipelines/pretrain.py",
        "experiment=smoke",
        f"trainer.storage_path={tmp_path}",
        "trainer.name=driver",
        *FAULT,
        f"ray.address={ray_cluster.get_runtime_context().gcs_address}",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    last = checkpoint_dir(run_dir, 1, 9)
    wait_for(lambda: ckpt.is_complete(last) or first.poll() is not None, 300, last.name, every=0.005)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    worker = worker_pid(run_dir)
    os.kill(worker, signal.SIGKILL)  # first, so that no later checkpoint lands before the job dies
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    print(
        f"injected: SIGKILL to the Train worker (pid {worker}) and the driver (pid {first.pid}) "
        f"once {last.name} was complete"
    )
    wait_until_free(ray_cluster, 90)

    # a checkpoint whose writer died mid-write, and one whose copy to storage was cut short
    write_torn_checkpoint(checkpoint_dir(run_dir, 1, 12))
    cut = checkpoint_dir(run_dir, 1, 15)
    cut.mkdir()
    for name in (ckpt.BACKBONE, ckpt.COMPLETE):
        (cut / name).write_bytes((last / name).read_bytes())
    (cut / ckpt.STATE).write_bytes((last / ckpt.STATE).read_bytes()[:1000])
    marker = json.loads((last / ckpt.COMPLETE).read_text())
    (cut / ckpt.COMPLETE).write_text(json.dumps({**marker, "step": 15}))
    print(f"injected: {cut.name} with COMPLETE but state.pt cut to 1,000 bytes")
    assert not ckpt.is_complete(checkpoint_dir(run_dir, 1, 12)) and not ckpt.is_complete(cut)
    assert ckpt.newest_complete(str(tmp_path), "driver").step == 9

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumes = jsonl(run_dir / "resumes.jsonl")
    print(f"observed: resumes {resumes}")
    assert len(resumes) == 1 and (resumes[0]["epoch"], resumes[0]["step"]) == (1, 9)  # nothing redone
    assert resumes[0]["checkpoint"].endswith(last.name)
    assert_same_losses_after(run_dir, reference, 9)
    assert "kNN top-1" in second.stdout


def test_sigterm_to_the_command_aborts_the_run_and_names_the_checkpoint_to_resume_from(
    ray_cluster, tmp_path
) -> None:
    """What a scheduler or a closed terminal sends: Ray Train's graceful abort, exit 143, one message.

    Ray Train's own SIGINT handler ends ``fit()`` with ``SystemExit(1)`` and nothing said about the
    run; Python's default SIGTERM kills the driver without a word. (The same command rerun resumes
    from the newest complete checkpoint: the driver-kill test above.)
    """
    run_dir = tmp_path / "term"
    command = [
        sys.executable,
        "pipelines/pretrain.py",
        "experiment=smoke",
        f"trainer.storage_path={tmp_path}",
        "trainer.name=term",
        *FAULT,
        f"ray.address={ray_cluster.get_runtime_context().gcs_address}",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = checkpoint_dir(run_dir, 0, 3)
    wait_for(lambda: ckpt.is_complete(first) or run.poll() is not None, 300, first.name, every=0.01)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    print(f"injected: SIGTERM to the driver once {first.name} was complete; observed: {err.strip()[-300:]}")
    wait_until_free(ray_cluster, 90)
    assert run.returncode == 143, out[-2000:] + err[-3000:]
    latest = ckpt.newest_complete(str(tmp_path), "term")
    assert latest is not None and latest.step >= 3 and latest.step < STEPS
    # Ray's workers log to the driver's stderr as they go (a line of theirs may come after ours),
    # and one may finish a checkpoint as the run is torn down: the one named is complete, >= step 3
    ours = [line for line in err.splitlines() if line.startswith("run term stopped by SIGTERM")]
    named = re.fullmatch(
        r"run term stopped by SIGTERM \(last complete checkpoint (\S+)\); "
        "run the same command again to resume it",
        ours[-1] if ours else "",
    )
    assert named, err[-3000:]
    assert ckpt.is_complete(named[1]) and 3 <= int(named[1].rsplit("_s", 1)[1]) <= latest.step, named[1]
    assert not any(
        line.startswith("Traceback") for line in err.splitlines()
    )  # none of ours (Ray's actors log theirs)
    assert not (run_dir / "results.json").exists()


class Payload:
    """Pickles to a call of ``open(path, "w")``: loading it unsafely would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_checkpoint_is_refused_and_never_executed(ray_cluster, tmp_path) -> None:
    """A run folder whose only checkpoint holds a pickle that would create a file when loaded.

    Written with the platform's own writer, so its ``COMPLETE`` marker agrees with the file: a
    thorough tamper. Resuming the run must refuse it in the Train worker and run nothing.
    """
    cfg = smoke(tmp_path, *FAULT, "trainer.max_failures=0", "trainer.name=tamper")
    run_dir = tmp_path / "tamper"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proof = tmp_path / "code-ran"
    folder = ckpt.write_checkpoint(
        checkpoint_dir(run_dir, 1, 8), {"epoch": 1, "step": 8, "model": Payload(proof)}, {"w": torch.ones(1)}
    )
    state = folder / ckpt.STATE
    print(f"injected: {state} holds a pickle that calls open({proof}, 'w') when loaded")
    with pytest.raises(RunStoppedError, match="refused to load") as info:
        pretrain(cfg)
    print(f"observed: {info.value}")
    assert str(state) in str(info.value) and "Unsupported global" in str(info.value)
    assert not proof.exists()


def test_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint(ray_cluster, tmp_path) -> None:
    cfg = smoke(
        tmp_path,
        "trainer.name=nan",
        "trainer.num_workers=1",
        "trainer.checkpoint_every_steps=4",
        "trainer.debug_nan_at_step=5",
        "eval.knn_every_epochs=0",
    )
    with pytest.raises(RunStoppedError, match="non-finite loss at step 5") as info:
        pretrain(cfg)
    print(f"injected: NaN into the batch of step 5; observed: {info.value}")
    run_dir = tmp_path / "nan"
    assert "checkpoint_e0000_s00000004" in str(info.value)
    stopped = json.loads((run_dir / "stopped.json").read_text())
    assert stopped["step"] == 5 and set(stopped["terms"]) == {"attraction", "repulsion"}
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_e*"))
    assert checkpoints == ["checkpoint_e0000_s00000004"]
    state = ckpt.read_checkpoint(run_dir / checkpoints[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run_dir / "results.json").exists()


def corrupt_shards(tmp_path: Path, n_good: int = 96) -> tuple[Path, dict[str, str], int]:
    """Shards of real CIFAR-10 JPEGs plus every bad kind; (root, expected reasons, good images)."""
    sample = pq.read_table(ROOT / "data" / "cifar10-sample" / "train-00000-of-00001.parquet")
    rows = {
        "image": sample["image"].to_pylist()[:n_good],
        "label": sample["label"].to_pylist()[:n_good],
        "key": [f"cifar-{i}.jpg" for i in range(n_good)],
    }
    expected = {}
    for i, (name, (data, reason)) in enumerate(corrupt_cases().items()):
        rows["image"].append(data)
        rows["label"].append(i % 10)
        rows["key"].append(name)
        if reason:
            expected[name] = reason
    rows["image"].append(encode(pattern(8, 8, 9)))
    rows["label"].append(10)  # out of range for 10 classes
    rows["key"].append("label10.png")
    expected["label10.png"] = "label out of range"
    root = tmp_path / "shards"
    root.mkdir()
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf, row_group_size=32)
    (root / "train-00000.parquet").write_bytes(buf.getvalue())
    (root / "train-00001.parquet").write_bytes(b"garbage, not parquet")
    expected[str(root / "train-00001.parquet")] = "unreadable shard"
    pq.write_table(pa.table({k: v[:64] for k, v in rows.items()}), root / "test-00000.parquet")
    (root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(10)))
    good = n_good + sum(1 for _, reason in corrupt_cases().values() if reason is None)
    return root, expected, good


def test_a_run_on_corrupt_data_finishes_and_reports_every_bad_file(ray_cluster, tmp_path) -> None:
    root, expected, good = corrupt_shards(tmp_path)
    print(f"injected: {len(expected)} bad files among {good} good images: {sorted(expected)}")
    out = pretrain(
        smoke(
            tmp_path,
            "trainer.name=corrupt",
            "dataset.name=shards",
            f"dataset.root={root}",
            "dataset.max_train_images=null",
            "dataset.max_bad_fraction=0.2",
            "trainer.num_workers=1",
            "trainer.batch_size=16",
            "eval.knn_every_epochs=0",
            "eval.final_linear_probe=false",
            "eval.random_init_baseline=false",
        )
    )
    report = json.loads((Path(out.run_dir) / "bad_images.json").read_text())
    reasons = {b["path"]: b["reason"] for b in report["bad_files"]}
    print(f"observed: {report['good']} good reads, bad files {reasons}")
    assert set(reasons) == set(expected) and len(report["bad_files"]) == len(expected)  # each once
    assert all(expected[path] in reason for path, reason in reasons.items())
    assert report["good"] == 2 * good  # every good image read in both epochs
    assert out.results["pretrained"]["knn_top1"] > 0
    assert out.results["data"]["bad"] == report["bad"] > 0


# the bug this guards against was a hang inside Ray's wait, which SIGALRM never interrupts: the
# thread method ends the test process instead of waiting for ever
@pytest.mark.timeout(420, method="thread")
def test_too_many_bad_images_stop_every_worker_and_the_command(ray_cluster, tmp_path) -> None:
    """Two workers: rank 0 reads the verdict and every rank must leave the loop (a rank that went
    on into the next step's all-reduce held the run, and the command, for ever)."""
    root, expected, good = corrupt_shards(tmp_path)
    bad_rows = len(expected) - 1  # every injected file but the unreadable shard is a row
    print(f"injected: {bad_rows} bad rows among {good} good images; dataset.max_bad_fraction=0.01")
    cfg = smoke(
        tmp_path,
        "trainer.name=too-many-bad",
        "dataset.name=shards",
        f"dataset.root={root}",
        "dataset.max_train_images=null",
        "dataset.max_bad_fraction=0.01",
        "trainer.num_workers=2",
        "trainer.batch_size=16",
        "trainer.log_every_steps=1",
        "eval.knn_every_epochs=0",
    )
    with pytest.raises(RunStoppedError, match="too many bad images"):
        pretrain(cfg)
    info = json.loads((tmp_path / "too-many-bad" / "stopped.json").read_text())
    snap = info["bad_images"]
    print(f"observed: stopped at step {info['step']} with {snap['bad']} bad of {snap['good'] + snap['bad']}")
    assert info["reason"] == "too many bad images"
    assert snap["good"] + snap["bad"] >= 100 and snap["bad"] / (snap["good"] + snap["bad"]) > 0.01
    assert snap["bad_fraction"] == pytest.approx(snap["bad"] / (snap["good"] + snap["bad"]))


@pytest.mark.timeout(1300)
def test_losing_a_node_mid_run_recovers_on_the_nodes_left(tmp_path) -> None:
    """A three-node cluster on this machine (its own, in a child process); one worker node removed.

    Measured alone: about 2 minutes; beside another CPU-bound job: about 4. The limits leave
    room for a machine twice as slow under load. On failure, Ray's logs stay in ``ray-logs``.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.multinode", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    logs = f"Ray's logs of the run: {seen.get('ray_logs')}"
    assert "removed" in seen, f"no node was removed: {seen.get('error')}; {logs}"
    print(f"injected: node {seen['removed'][:12]} removed at step {seen['removed_at_step']}")
    print(f"observed: {seen}")
    assert "trainer.storage_path" in seen["refused"] and "storage_shared=true" in seen["refused"]
    assert seen["finished"] and seen["final_step"] == STEPS, f"{seen.get('error')}; {logs}"
    assert len(seen["resumes"]) >= 1 and seen["resumes"][0]["step"] > 0  # from a checkpoint, not scratch
    after = [w for w in seen["workers"] if w["time"] > seen["removed_time"]]
    assert after and all(w["node_id"] != seen["removed"] for w in after)  # on the nodes left
    assert {w["rank"] for w in after} == {0, 1}
