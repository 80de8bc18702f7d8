"""Ray Tune searches of real tiny pretraining runs on the local cluster: ASHA, errors, best config, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config.paths import resolve_paths
from pipelines.core import checkpoints as ckpt
from pipelines.core.errors import ConfigError
from pipelines.search.results import UNFINISHED
from pipelines.search.run import concurrency, search
from tests.helpers.runs import jsonl, step_losses, wait_for, wait_until_free, watchers, worker_pid

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)

TINY = {
    "name": "tiny",
    "experiment": "smoke",
    "overrides": [
        "trainer.num_workers=1",
        "trainer.resources_per_worker={CPU: 0.45}",
        "trainer.epochs=4",
        "eval.knn_bank_size=256",
        "eval.final_linear_probe=false",
        "eval.random_init_baseline=false",
    ],
    # 1e300 passes the up-front checks (a finite number > 0) but is inf in float32: that trial's
    # loss is not finite at its first step, so it stops with an error inside Tune
    "params": {"objective.hparams.t_neg": {"grid": [0.3, 0.9, 3.0, 1e300]}},
    "num_samples": 1,
    "asha": {"grace_period": 1, "reduction_factor": 2},
}


def tune_config(storage: Path, **tune: object) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("tune"), resolve=True)
    cfg["search"] = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["tune"].update(storage_path=str(storage), verbose=0, **tune)
    return cfg


VICTIM = 0.5  # the t_neg of the trial whose Train worker the merged search's test kills


def kill_the_victims_worker(trials: Path, killed: dict[str, object]) -> None:
    """Once the trial with ``t_neg = VICTIM`` has logged 3 steps, SIGKILL its Train worker."""

    def started() -> list[Path]:
        if not trials.exists():
            return []
        return [
            d
            for d in trials.glob("*")
            if (d / "config.yaml").exists()
            and yaml.safe_load((d / "config.yaml").read_text())["objective"]["hparams"]["t_neg"] == VICTIM
            and len(step_losses(d)) >= 3
        ]

    victim = wait_for(started, 600, "the victim trial to log 3 steps", every=0.2)[0]
    killed.update(trial=victim.name, pid=worker_pid(victim))
    os.kill(killed["pid"], signal.SIGKILL)


def test_a_search_with_asha_an_error_a_killed_worker_and_the_best_config(ray_cluster, tmp_path) -> None:
    """Five trials, one at a time: three judged by ASHA, one whose loss is not finite, one whose
    Ray Train worker is killed mid-epoch (both recorded as errors, and the search goes on)."""
    seen = watchers()
    # one trial at a time, in grid order: ASHA lets the first trial to reach a rung go on and stops
    # a later one below the rung's cutoff, so which trials stop depends on their order of arrival;
    # two at a time made it a race (the scores themselves are the same every run). The killed
    # trial reports no epoch, so ASHA judges the other three the same wherever it stands.
    cfg = tune_config(tmp_path, max_concurrent_trials=1)
    cfg["search"]["overrides"].append("trainer.log_every_steps=1")
    cfg["search"]["params"] = {"objective.hparams.t_neg": {"grid": [0.3, VICTIM, 0.9, 3.0, 1e300]}}
    killed: dict[str, object] = {}
    killer = threading.Thread(
        target=kill_the_victims_worker, args=(tmp_path / "tiny" / "trials", killed), daemon=True
    )
    killer.start()
    out = search(cfg)
    killer.join(5)
    assert watchers() == seen  # tune.preemption_watcher=false: no watcher actor per trial
    print(f"injected: SIGKILL to trial {killed['trial']}'s Train worker (pid {killed['pid']})")
    rows = {r.values["objective.hparams.t_neg"]: r for r in out.rows}
    assert sorted(rows) == [0.3, VICTIM, 0.9, 3.0, 1e300]
    print({k: (r.status, r.epochs, r.final, r.error[:120]) for k, r in rows.items()})
    assert rows[1e300].status == "error" and "non-finite loss" in rows[1e300].error  # the search went on
    assert rows[VICTIM].trial_id == killed["trial"] and rows[VICTIM].status == "error" and rows[VICTIM].error
    assert "non-finite" not in rows[VICTIM].error
    good = [r for k, r in rows.items() if k not in (VICTIM, 1e300)]
    assert {r.trial_id.rsplit("_", 1)[0] for r in rows.values()} == {good[0].trial_id.rsplit("_", 1)[0]}
    assert any(r.status == "stopped early (ASHA)" and r.epochs < 4 for r in good)
    assert any(r.status == "completed" and r.epochs == 4 for r in good)
    for r in good:  # every trial scored from its own per-epoch kNN history
        assert r.best >= r.final and 0 < r.final <= 100
    assert wait_until_free(ray_cluster)["CPU"] == pytest.approx(ray_cluster.cluster_resources()["CPU"])

    table = list(csv.DictReader(out.files["csv"].open()))
    assert len(table) == 5 and {t["status"] for t in table} >= {"error", "completed", "stopped early (ASHA)"}
    assert out.files["plot"].read_bytes()[:4] == b"\x89PNG"
    for r in good:
        assert list((out.folder / "trials" / r.trial_id / "tensorboard").glob("events.out.tfevents.*"))
    for r in (r for r in good if r.status == "completed"):  # ASHA's stop at max_t came after them
        files = {p.name for p in (out.folder / "trials" / r.trial_id).iterdir()}
        assert {"results.json", "results.md", "report.png"} <= files, (r.trial_id, sorted(files))

    best = out.best
    assert best.status == "completed" and best.final == max(r.final for r in good if r.status == "completed")
    trial_cfg = yaml.safe_load((out.folder / "trials" / best.trial_id / "config.yaml").read_text())
    assert trial_cfg["objective"]["hparams"]["t_neg"] == best.values["objective.hparams.t_neg"]
    proc = subprocess.run(
        [
            sys.executable,
            "pipelines/pretrain.py",
            "--config-dir",
            str(out.folder / "configs"),
            "experiment=best",
            "--cfg",
            "job",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    reproduced = resolve_paths(yaml.safe_load(proc.stdout), ROOT)  # as pretrain.py resolves it
    for group in ("dataset", "objective", "framework", "model", "augment"):
        assert reproduced[group] == trial_cfg[group], group
    skip = {"name", "storage_path", "read_task_cpus"}  # a trial's own; best.yaml is for a run on its own
    assert {k: v for k, v in reproduced["trainer"].items() if k not in skip} == {
        k: v for k, v in trial_cfg["trainer"].items() if k not in skip
    }
    assert reproduced["objective"]["hparams"]["t_neg"] == best.values["objective.hparams.t_neg"]


def test_concurrency_follows_the_cluster_and_each_trials_scaling() -> None:
    cfg = {"trainer": {"num_workers": 2, "resources_per_worker": {"CPU": 2}, "use_gpu": False}}
    assert concurrency({"CPU": 16}, cfg, 0.5, None) == 3  # 3 x 4.01 + 1.5 <= 16 < 4 x 4.01 + 2
    assert concurrency({"CPU": 16}, cfg, 0.5, 2) == 2
    gpu = {"trainer": {"num_workers": 2, "resources_per_worker": {"CPU": 4, "GPU": 1}, "use_gpu": True}}
    assert concurrency({"CPU": 64, "GPU": 8}, gpu, 1.0, None) == 4  # the GPUs bind
    tiny = {"trainer": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}, "use_gpu": False}}
    assert concurrency({"CPU": 2}, tiny, 0.5, None) == 1  # 2 x 0.51 + 1 > 2: a data task would starve
    tiny["trainer"]["resources_per_worker"]["CPU"] = 0.45
    assert concurrency({"CPU": 2}, tiny, 0.5, None) == 2
    with pytest.raises(ConfigError, match="one trial needs"):
        concurrency({"CPU": 1}, cfg, 0.5, None)


def _checkpoints(trials: Path) -> list[ckpt.Found]:
    """Every trial's complete checkpoints (their files as their ``COMPLETE`` marker records)."""
    return [c for t in sorted(trials.glob("*")) for c in ckpt.scan_checkpoints(str(trials), t.name)[0]]


def _resumes(trials: Path) -> list[dict]:
    """The lines of the (one) trial's ``resumes.jsonl``."""
    return jsonl(next(trials.glob("*/resumes.jsonl"), trials / "none"))


def _driver_until(command: list[str], env: dict, log_path: Path, trials: Path, epoch: int) -> tuple:
    """Start the ``tune.py`` driver and return ``(process, {trial: newest complete checkpoint})``
    once it wrote a complete checkpoint of ``epoch`` or later of its own: on a rerun, one past the
    step this driver's trial resumed from (not one an earlier driver's trial wrote as it ended)."""
    resumed_before, rerun = len(_resumes(trials)), trials.exists()

    def reached() -> dict[str, str]:
        resumes = _resumes(trials)
        if rerun and len(resumes) <= resumed_before:
            return {}  # this driver's trial has not resumed yet
        after = resumes[-1]["step"] if rerun else 0
        done = sorted((c.step, c.path) for c in _checkpoints(trials) if c.epoch >= epoch and c.step > after)
        return {Path(path).parent.name: Path(path).name for _, path in done}

    log = log_path.open("w")  # a file, not a pipe: a full pipe would stall the driver
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and not reached():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.5)
    seen = reached()
    assert seen, f"the driver wrote no complete checkpoint of epoch {epoch} or later in 400 s"
    return proc, seen


def test_stopping_the_driver_and_rerunning_continues_the_search(ray_cluster, tmp_path) -> None:
    """The `tune.py` command on the test cluster, stopped (SIGTERM, as a scheduler or a closed
    terminal does) once a trial has a checkpoint, run again and killed (SIGKILL) at its next
    checkpoint, then run a third time: each run goes on from where the last one stopped."""
    (tmp_path / "search").mkdir()
    # one trial: the resume of an unfinished trial is what is checked, and alone it reaches its
    # checkpoint sooner
    # five epochs: the first driver may write one more checkpoint between SIGTERM and its trial's
    # end, and the second must still stop (SIGKILL) short of the last one
    spec = {
        **TINY,
        "overrides": [*TINY["overrides"], "trainer.epochs=5"],
        "params": {"objective.hparams.t_neg": {"grid": [0.5]}},
        "asha": {"grace_period": 5},
    }
    (tmp_path / "search" / "resume.yaml").write_text(yaml.safe_dump({**spec, "name": "resume"}))
    address = ray_cluster.get_runtime_context().gcs_address
    command = [
        sys.executable,
        "pipelines/tune.py",
        "--config-dir",
        str(tmp_path),
        "search=resume",
        f"tune.storage_path={tmp_path / 'out'}",
        f"ray.address={address}",
        "tune.verbose=0",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    trials = tmp_path / "out" / "resume" / "trials"

    first, at_term = _driver_until(command, env, tmp_path / "first.log", trials, 2)
    os.kill(first.pid, signal.SIGTERM)  # a clean stop: Tune saves its state; one line says how to resume
    first.wait(120)
    out = (tmp_path / "first.log").read_text()
    print("sent SIGTERM to the driver with checkpoints", at_term, "exit code", first.returncode)
    assert first.returncode == 143, out[-3000:]
    assert "search resume stopped by SIGTERM: its state is saved; run the same command again" in out
    assert not any(bad in out for bad in ("Aborted", "core dumped", "Fatal Python error")), out[-3000:]
    stopped = list(csv.DictReader((tmp_path / "out" / "resume" / "results.csv").open()))
    assert [r["status"] for r in stopped] == [UNFINISHED], stopped  # not "stopped early (ASHA)"
    wait_until_free(ray_cluster, 90)

    # the first driver's trial may write its next checkpoint after SIGTERM (a race CI lost once):
    # the second driver is killed at a checkpoint of its own, past the step it resumed from
    second, at_kill = _driver_until(command, env, tmp_path / "second.log", trials, 3)
    os.kill(second.pid, signal.SIGKILL)  # the driver dies, its trials go with it
    second.wait(120)
    assert "resuming search resume" in (tmp_path / "second.log").read_text()
    assert max(c.epoch for c in _checkpoints(trials)) < 5, at_kill  # the third run has work left
    print("sent SIGKILL to the resumed driver with checkpoints", at_kill)
    wait_until_free(ray_cluster, 90)

    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "resuming search resume" in third.stdout
    rows = list(csv.DictReader((tmp_path / "out" / "resume" / "results.csv").open()))
    assert len(rows) == 1 and all(r["status"] == "completed" and r["epochs"] == "5" for r in rows)
    for trial, name in at_term.items():  # each run resumed from the last one's checkpoint, not from scratch
        resumes = [json.loads(x) for x in (trials / trial / "resumes.jsonl").read_text().splitlines()]
        seen_steps = [int(name.rsplit("_s", 1)[1]), int(at_kill[trial].rsplit("_s", 1)[1])]
        assert len(resumes) == 2, resumes
        assert all(r["step"] >= seen > 0 for r, seen in zip(resumes, seen_steps, strict=True)), resumes
        assert seen_steps[1] > seen_steps[0]  # the second run trained on before it was killed
        steps = [
            json.loads(x)["step"]
            for x in (trials / trial / "metrics.jsonl").read_text().splitlines()
            if '"loss/total"' in x
        ]
        assert len(steps) == len(set(steps)) and max(steps) == 5 * 8  # no step logged twice
    assert len(list(trials.iterdir())) == 1  # no new trial: the same search went on
