"""The user command ``python pipelines/prepare.py ...`` as a real subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from tests.helpers import replicas

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "prepare.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_prepare_command_writes_shards_and_manifest(tmp_path):
    replicas.stl10(tmp_path / "raw")
    out = tmp_path / "shards"
    proc = run(
        "dataset=stl10",
        f"dataset.root={tmp_path / 'raw'}",
        f"out={out}",
        "splits=[train+unlabeled,test]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train+unlabeled"]["rows"] == 13
    assert manifest["splits"]["train+unlabeled"]["unlabeled"] == 6
    assert manifest["splits"]["test"]["rows"] == 4
    assert "train+unlabeled: 13 images" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # Hydra writes nothing into the working folder
    again = run(  # other settings into the same folder: refused before Ray starts (it was after)
        "dataset=stl10",
        f"dataset.root={tmp_path / 'raw'}",
        f"out={out}",
        "splits=[train+unlabeled,test]",
        "shuffle.seed=1",
        cwd=tmp_path,
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds the shards of another prepare: shuffle.seed: 0 -> 1" in again.stderr
    assert "Started a local Ray instance" not in again.stdout + again.stderr


def test_prepare_command_names_the_missing_key(tmp_path):
    proc = run("dataset=cifar10", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode != 0 and "dataset.root is not set" in proc.stderr
    (tmp_path / "raw").mkdir()
    proc = run("dataset=cifar10", f"dataset.root={tmp_path / 'raw'}", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode != 0 and "set dataset.root to the extracted cifar-10-batches-py" in proc.stderr
    proc = run("dataset=cifar10", "dataset.root='~/raw'", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode == 2 and f"{pathlib.Path.home() / 'raw'}" in proc.stderr  # ~ expanded
    proc = run(
        "dataset=imagefolder",
        f"dataset.root={tmp_path / 'raw'}",
        f"out={tmp_path / 'raw' / 'shards'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"config error: out={tmp_path / 'raw' / 'shards'} is inside dataset.root={tmp_path / 'raw'}: "
        "the next run would read the shards as raw data; put out outside the raw dataset's folder"
    )
    proc = run("dataset=nope", cwd=tmp_path)
    assert proc.returncode != 0 and "nope" in proc.stderr


def test_input_errors_are_one_line_with_exit_code_2(tmp_path):
    raw = tmp_path / "webvision"
    replicas.webvision(raw)
    (raw / "info" / "synsets.txt").unlink()
    proc = run("dataset=webvision", f"dataset.root={raw}", f"out={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr  # above the message, at most Ray's line saying it started
    # ours, once: Ray's processes log to stderr as they go, so it need not be the last line
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "synsets.txt is missing: set dataset.root to the WebVision" in ours[0], ours
    (tmp_path / "raw").mkdir()
    proc = run("dataset=cifar10", f"dataset.root={tmp_path / 'raw'}", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "set dataset.root to the extracted cifar-10-batches-py" in proc.stderr
    replicas.stl10(tmp_path / "stl")
    proc = run(
        "dataset=stl10",
        f"dataset.root={tmp_path / 'stl'}",
        f"out={tmp_path / 'y'}",
        "shuffle.rows_per_shard=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "shuffle.rows_per_shard=0 must be at least 1" in proc.stderr


def test_a_held_out_split_that_cannot_be_made_is_refused_before_ray_starts(tmp_path):
    replicas.stl10(tmp_path / "stl")
    common = ("dataset=stl10", f"dataset.root={tmp_path / 'stl'}", f"out={tmp_path / 'out'}")
    proc = run(*common, "holdout.fraction=0.1", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert (
        "holdout.split is not set" in proc.stderr and "set holdout.split=<the one to divide>" in proc.stderr
    )
    proc = run(*common, "holdout.fraction=0.1", "holdout.split=unlabeled", "splits=[train,val]", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "holdout.split=unlabeled would write the splits train and val" in proc.stderr
    )
    assert not (tmp_path / "out").exists()
