"""Shared fixtures: one local Ray cluster for the whole run, and an S3-compatible server."""

from __future__ import annotations

import os

import pytest

from pipelines.core.config_schema import register

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
# credentials for the local S3 server, set before Ray starts so its workers inherit them (a
# worker without them signs nothing and the SDK streams an aws-chunked body moto stores raw)
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_key, _value)

register()  # the config groups' typed schemas, for every test that composes a config

# The longest test files (minutes each on 2 cores), longest first. `make test` hands whole files to
# its pytest processes in collection order; started first, these do not finish alone at the end.
LONGEST_FILES = (
    "tests/integration/test_preset_chains.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_tune.py",
    "tests/integration/test_pretrain.py",
    "tests/integration/test_linear_probe.py",
    "tests/integration/test_study.py",
)


def run_order(nodeid: str) -> int:
    """Where a test's file goes in the run: ``tests/e2e`` first (its ``ray stop`` at the end would
    stop the session's cluster), then :data:`LONGEST_FILES` in their order, then the rest."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/e2e/"):
        return -1
    return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the files by :func:`run_order`; tests keep their order within a file (a stable sort)."""
    items.sort(key=lambda item: run_order(item.nodeid))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster of its own (never attaches to another one on the machine), with the
    job runtime environment entry points use (``ray_session.RUNTIME_ENV``)."""
    import ray

    from pipelines.ray_session import RUNTIME_ENV

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=500_000_000,
        log_to_driver=False,
        configure_logging=False,
        runtime_env=RUNTIME_ENV,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with a bucket ``data``; yields a URI prefix builder."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port
    endpoint = f"127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket="data")

    def uri(prefix: str) -> str:
        return f"s3://data/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"

    yield uri
    server.stop()
