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
