"""The pieces restarts rely on: finding the newest whole checkpoint, refusing unsafe files,
torn metric lines, shared-storage checks, and naming a worker's checkpoint error."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from pipelines.config.paths import check_shared_storage
from pipelines.core import checkpoints as ckpt
from pipelines.core.errors import ConfigError
from pipelines.core.run_log import RunLog
from pipelines.core.storage import on_network_filesystem
from pipelines.training.run import checkpoint_problem


def write(run: Path, epoch: int, step: int) -> Path:
    state = {"epoch": epoch, "step": step, "model": {"w": torch.full((4,), float(step))}}
    return ckpt.write_checkpoint(run / f"checkpoint_e{epoch:04d}_s{step:08d}", state, {"w": torch.ones(2)})


def test_newest_complete_takes_the_most_steps_then_epochs_and_skips_torn_copies(tmp_path) -> None:
    run = tmp_path / "run"
    write(run, 0, 3)
    write(run, 0, 8)  # a step checkpoint at the epoch's last step ...
    write(run, 1, 8)  # ... and the epoch-end one at the same step: the later
    cut = write(run, 1, 12)
    data = (cut / ckpt.STATE).read_bytes()
    (cut / ckpt.STATE).write_bytes(data[: len(data) // 2])  # a copy cut short, marker present
    (run / "checkpoint_e0001_s00000015").mkdir()  # a writer that died before anything landed
    (run / "not_a_checkpoint").mkdir()
    found = ckpt.newest_complete(str(tmp_path), "run")
    assert (found.epoch, found.step, Path(found.path).name) == (1, 8, "checkpoint_e0001_s00000008")
    assert found.uri == found.path  # a local folder is its own location
    assert not ckpt.is_complete(cut) and ckpt.is_complete(run / "checkpoint_e0001_s00000008")
    with pytest.raises(ckpt.IncompleteCheckpointError, match="cut short"):
        ckpt.read_checkpoint(cut)
    assert ckpt.newest_complete(str(tmp_path), "missing") is None


def test_a_marker_without_sizes_still_needs_both_files(tmp_path) -> None:
    d = write(tmp_path / "run", 0, 1)
    (d / ckpt.COMPLETE).write_text(json.dumps({"epoch": 0, "step": 1}))  # an older marker
    assert ckpt.is_complete(d)
    (d / ckpt.BACKBONE).unlink()
    assert not ckpt.is_complete(d)
    (d / ckpt.COMPLETE).write_text("{not json")
    assert not ckpt.is_complete(d)


class Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_file_with_pickled_code_is_refused_and_nothing_runs(tmp_path) -> None:
    d = write(tmp_path / "run", 0, 1)
    proof = tmp_path / "ran"
    torch.save({"epoch": 0, "step": 1, "model": Payload(proof)}, d / ckpt.STATE)
    marker = json.loads((d / ckpt.COMPLETE).read_text())
    marker["files"][ckpt.STATE] = (d / ckpt.STATE).stat().st_size
    (d / ckpt.COMPLETE).write_text(json.dumps(marker))
    with pytest.raises(ckpt.UnsafeCheckpointError, match="refused to load") as info:
        ckpt.read_checkpoint(d)
    assert str(d / ckpt.STATE) in str(info.value) and not proof.exists()
    from pipelines.evaluation.export import load_state

    torch.save(Payload(proof), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="refused to load"):
        load_state(tmp_path / "weights.pt")
    assert not proof.exists()
    make, args = Payload(proof).__reduce__()  # what an unsafe load would call: it does create the file
    make(*args).close()
    assert proof.exists()


def test_checkpoint_problem_finds_the_error_inside_ray_trains_wrapper() -> None:
    from ray.train import WorkerGroupError

    try:
        try:
            raise ckpt.UnsafeCheckpointError("x/state.pt: refused to load: ...")
        except ckpt.UnsafeCheckpointError as inner:
            raise RuntimeError("worker failed") from inner
    except RuntimeError as outer:
        wrapped = WorkerGroupError("rank 0 failed", {0: outer})
    assert checkpoint_problem(wrapped) == "x/state.pt: refused to load: ..."
    assert checkpoint_problem(WorkerGroupError("boom", {0: ValueError("other")})) is None


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path) -> None:
    rows = [json.dumps({"step": s, "loss/total": 1.0 / s}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 5, "loss/to')
    log = RunLog(tmp_path, resume_step=3)
    log.close()
    kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [1, 2, 3]


def test_network_filesystems_are_found_by_the_longest_mount_point(tmp_path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "overlay / overlay rw 0 0\n"
        "server:/export /mnt/shared nfs4 rw 0 0\n"
        "tmpfs /mnt/shared/scratch tmpfs rw 0 0\n"
        "s3fs /mnt/bucket fuse.s3fs rw 0 0\n"
        "/dev/sdb1 /mnt/usb fuseblk rw 0 0\n"
    )
    assert on_network_filesystem("/mnt/shared/runs", str(mounts))
    assert not on_network_filesystem("/mnt/shared/scratch/runs", str(mounts))
    assert on_network_filesystem("/mnt/bucket", str(mounts))
    assert not on_network_filesystem("/mnt/usb/runs", str(mounts))  # a local disk through FUSE
    assert not on_network_filesystem("/mnt/sharedx", str(mounts))
    assert not on_network_filesystem("/home/me/runs", str(mounts))


def test_a_local_storage_path_is_refused_on_several_nodes_only(tmp_path) -> None:
    local = {"storage_path": str(tmp_path)}
    check_shared_storage(local, alive_nodes=1)
    check_shared_storage({"storage_path": "s3://bucket/runs"}, alive_nodes=4)
    check_shared_storage({**local, "storage_shared": True}, alive_nodes=4)
    if on_network_filesystem(str(tmp_path)):
        pytest.skip("the temp folder is on a network file system here")
    with pytest.raises(ConfigError, match=r"trainer\.storage_path=.*3 nodes") as info:
        check_shared_storage(local, alive_nodes=3)
    assert "trainer.storage_shared=true" in str(info.value) and "s3://" in str(info.value)


def test_newest_complete_reads_s3_storage(s3_server, tmp_path) -> None:
    import pyarrow.fs as pafs

    write(tmp_path / "run", 0, 2)
    write(tmp_path / "run", 1, 5)
    uri = s3_server("recovery")
    fs, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(tmp_path / "run"), f"{root}/run", destination_filesystem=fs)
    found = ckpt.newest_complete(uri, "run")
    assert (found.epoch, found.step) == (1, 5)
    assert found.uri.startswith("s3://data/recovery/run/checkpoint_e0001_s00000005?endpoint_override=")
    from ray.train import Checkpoint

    with Checkpoint(found.uri).as_directory() as d:
        assert ckpt.read_checkpoint(d)["model"]["w"].tolist() == [5.0] * 4
    shutil.rmtree(tmp_path / "run")


def test_each_metrics_row_says_when_it_was_logged(tmp_path) -> None:
    log = RunLog(tmp_path)
    before = time.time()
    log.scalars(7, {"loss/total": 1.5}, epoch=0)
    log.close()
    (row,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 7 and row["loss/total"] == 1.5 and before - 0.01 <= row["time"] <= time.time()
