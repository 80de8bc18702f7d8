"""The shared basics: the one atomic-write helper and the stop record."""

from __future__ import annotations

import json

import pytest

from pipelines.core.run_files import STOPPED, write_stop
from pipelines.core.storage import Store, atomic_path, join_location, write_atomic


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    assert write_atomic(target, "first") == target
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_store_writes_local_files_through_the_same_helper(tmp_path):
    store = Store.open(tmp_path)
    store.write_atomic(b"x" * 10, "deep", "f.bin")
    assert (tmp_path / "deep" / "f.bin").read_bytes() == b"x" * 10
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["f.bin"]


def test_write_stop_records_the_reason_and_details(tmp_path):
    path = write_stop(tmp_path, "non-finite loss at step 7", step=7, terms={"a": 1.5})
    assert path == tmp_path / STOPPED
    record = json.loads(path.read_text())
    assert record["reason"] == "non-finite loss at step 7" and record["step"] == 7
    assert record["terms"] == {"a": 1.5} and record["time"] > 0


def test_join_location_keeps_a_uris_options_at_the_end():
    assert join_location("/data/in22k/", "w.tar") == "/data/in22k/w.tar"
    assert join_location("s3://b/p?endpoint_override=h:9000&scheme=http", "w.tar") == (
        "s3://b/p/w.tar?endpoint_override=h:9000&scheme=http"
    )
