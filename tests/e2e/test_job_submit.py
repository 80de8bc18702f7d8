"""`ray job submit` of the pretraining command against a head started by platform/local/ray-head.sh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "platform" / "local" / "ray-head.sh"
RAY = ROOT / ".venv" / "bin" / "ray"
pytestmark = pytest.mark.timeout(900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head(tmp_path):
    """A token-protected head on free ports; yields (client env, dashboard address, token)."""
    dash = free_port()
    env = {
        **os.environ,
        "CACR_RAY_DIR": str(tmp_path / "state"),
        "CACR_DASHBOARD_PORT": str(dash),
        "CACR_GCS_PORT": str(free_port()),
        "CACR_METRICS_PORT": str(free_port()),
        "CACR_NUM_CPUS": "2",
        "CACR_OBJECT_STORE_BYTES": "1000000000",
        "CACR_RAY_AUTH": "token",
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    start = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    assert start.returncode == 0, start.stderr
    assert f"http://127.0.0.1:{dash}" in start.stdout and "ray job submit" in start.stdout
    client = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
    for line in client.stdout.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    try:
        yield env, f"http://127.0.0.1:{dash}", token_file
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def test_job_submit_runs_the_smoke_experiment(head, tmp_path) -> None:
    env, address, token_file = head
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no API
        urllib.request.urlopen(f"{address}/api/version", timeout=10)
    assert refused.value.code == 401
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [
            str(RAY),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            ".",
            "--submission-id",
            "cacr-smoke",
            "--",
            "python",
            "pipelines/pretrain.py",
            "experiment=smoke",
            f"trainer.storage_path={storage}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert token not in out  # the token is never printed
    request = urllib.request.Request(
        f"{address}/api/jobs/cacr-smoke", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        job = json.load(reply)
    assert job["status"] == "SUCCEEDED", job
    run_dir = storage / "smoke"
    checkpoints = list(run_dir.glob("checkpoint_e0002_s*"))
    assert (
        checkpoints and (checkpoints[0] / "COMPLETE").exists() and (checkpoints[0] / "backbone.pt").exists()
    )
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "experiment_name: smoke" in (run_dir / "config.yaml").read_text()
    assert "kNN top-1" in out and "run folder:" in out
