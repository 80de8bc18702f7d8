"""`ray job submit` of the pretraining command against a head started by platform/local/ray-head.sh."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.training.live import FIGURES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "platform" / "local" / "ray-head.sh"
RAY = ROOT / ".venv" / "bin" / "ray"
pytestmark = pytest.mark.timeout(900)


GIVEN: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up), where a port free now can
    still be taken by an outgoing connection of Ray's own before the head binds it; never one
    given before."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port in GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            GIVEN.add(port)
            return port
    raise AssertionError("no free port in 20000-31999")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-protected head on free ports; yields (client env, dashboard address, token)."""
    dash = free_port()
    env = {
        **os.environ,
        "CACR_RAY_DIR": str(tmp_path_factory.mktemp("state")),
        "CACR_DASHBOARD_PORT": str(dash),
        "CACR_GCS_PORT": str(free_port()),
        "CACR_METRICS_PORT": str(free_port()),
        "CACR_NUM_CPUS": "2",
        "CACR_OBJECT_STORE_BYTES": "1000000000",
        "CACR_RAY_AUTH": "token",
        "RAY_metrics_report_interval_ms": "1000",  # export each second so a short run is seen
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
        yield env, f"http://127.0.0.1:{dash}", token_file, int(env["CACR_METRICS_PORT"])
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def outside_address() -> str | None:
    """This machine's first non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def metric_names(port: int) -> set[str]:
    """The ``ray_cacr_*`` series the node's metrics endpoint exports now."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return set()
    return {line.split("{", 1)[0] for line in text.splitlines() if line.startswith("ray_cacr_")}


def test_the_head_listens_on_loopback_only_and_refuses_clients_without_the_token(head, tmp_path) -> None:
    env, address, _, _ = head
    port = int(address.rsplit(":", 1)[1])
    ip = outside_address()
    if ip is not None:  # the dashboard/Jobs API port is closed on the outside interface
        with pytest.raises(OSError), socket.create_connection((ip, port), timeout=5):
            pass
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    anonymous["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    proc = subprocess.run(
        [str(RAY), "job", "submit", "--address", address, "--", "echo", "should-not-run"],
        cwd=tmp_path,
        env=anonymous,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    print(f"outside address {ip}; submission without the token: rc {proc.returncode}: {out[-300:]}")
    assert proc.returncode != 0 and "should-not-run" not in proc.stdout
    assert any(word in out.lower() for word in ("401", "unauthorized", "token"))


def test_job_submit_runs_the_smoke_experiment_and_exports_live_metrics(head, tmp_path) -> None:
    env, address, token_file, metrics_port = head
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
            "--no-wait",
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
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    request = urllib.request.Request(
        f"{address}/api/jobs/cacr-smoke", headers={"Authorization": f"Bearer {token}"}
    )
    seen: set[str] = set()
    done = threading.Event()

    def scrape() -> None:  # the node's metrics endpoint, every 0.2 s while the job runs: Ray keeps a
        while not done.is_set():  # gauge's value for 2 s, and the Jobs API can take longer to answer
            seen.update(metric_names(metrics_port))
            time.sleep(0.2)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            with urllib.request.urlopen(request, timeout=30) as reply:
                job = json.load(reply)
            if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(0.5)
    finally:
        done.set()
        scraper.join(10)
    logs = subprocess.run(
        [str(RAY), "job", "logs", "--address", address, "cacr-smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr + logs.stdout + logs.stderr
    print(f"live metrics scraped from 127.0.0.1:{metrics_port}: {sorted(seen)}")
    assert job["status"] == "SUCCEEDED", out[-4000:]
    assert token not in out  # the token is never printed
    expected = {f"ray_{name}" for name, _ in FIGURES.values()}
    assert seen == expected
    run_dir = storage / "smoke"
    checkpoints = list(run_dir.glob("checkpoint_e0002_s*"))
    assert (
        checkpoints and (checkpoints[0] / "COMPLETE").exists() and (checkpoints[0] / "backbone.pt").exists()
    )
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "experiment_name: smoke" in (run_dir / "config.yaml").read_text()
    assert "kNN top-1" in out and "run folder:" in out
