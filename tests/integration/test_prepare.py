"""``prepare`` on a real local Ray cluster: replicas round-trip, bad files reported, resume, S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.decode import decode_image
from pipelines.data.prepare import prepare_dataset
from pipelines.data.shuffle_writer import ShuffleSettings
from pipelines.data.sources import open_source
from pipelines.data.sources.holdout import HoldOutSettings
from tests.helpers import replicas
from tests.helpers.data_fixtures import corrupt_cases, encode, pattern


def read_back(out, split):
    src = open_source("shards", str(out))
    return [r for c in src.chunks(split) for r in src.read(c)]


def test_cifar10_pickles_round_trip_pixel_exact(ray_cluster, tmp_path):
    rep = replicas.cifar10(tmp_path / "raw")
    manifest = prepare_dataset("cifar10", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert manifest["classes"] == rep["classes"]
    assert manifest["splits"]["test"]["rows"] == 20
    assert manifest["splits"]["test"]["per_class"] == np.bincount(rep["test"][1], minlength=10).tolist()
    train = manifest["splits"]["train"]
    assert train["order"] == "shuffled" and manifest["bad_files"] == []
    labels = np.concatenate([rep["train"][b][1] for b in range(1, 6)])
    assert train["per_class"] == np.bincount(labels, minlength=10).tolist()
    assert manifest["splits"]["test"]["order"] == "source"  # evaluation splits keep their order
    back = read_back(tmp_path / "out", "test")
    assert [r["label"] for r in back] == rep["test"][1]
    np.testing.assert_array_equal(np.stack([decode_image(r["image"])[0] for r in back]), rep["test"][0])
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["splits"]["train"]["rows"] == manifest["splits"]["train"]["rows"]


def test_every_bad_kind_is_reported_and_every_good_file_kept(ray_cluster, tmp_path, capsys):
    raw = tmp_path / "raw"
    cases = corrupt_cases()
    for name, (data, _) in cases.items():
        (raw / "cls").mkdir(parents=True, exist_ok=True)
        if data is not None:
            (raw / "cls" / name).write_bytes(data)
    # files that are not taken for images: counted by extension (they vanished without a word)
    for name in ("notes.txt", "labels.TXT", "photo.heic", "README", ".DS_Store"):
        (raw / "cls" / name).write_bytes(cases["plain.png"][0])
    manifest = prepare_dataset("imagefolder", str(raw), str(tmp_path / "out"))
    assert manifest["splits"]["all"]["skipped_files"] == {".txt": 2, "(none)": 1, ".heic": 1}
    assert next(iter(manifest["splits"]["all"]["skipped_files"])) == ".txt"  # the most first
    assert (
        "all: skipped 4 file(s) without an image extension (.txt 2, (none) 1, .heic 1)"
        in capsys.readouterr().out
    )
    reasons = {b["path"].split("/")[-1]: b["reason"] for b in manifest["bad_files"]}
    expected_bad = {n: r for n, (d, r) in cases.items() if r is not None and d is not None}
    assert set(reasons) == set(expected_bad)
    for name, fragment in expected_bad.items():
        assert fragment in reasons[name]
    kept = {r["key"].split("/")[-1] for r in read_back(tmp_path / "out", "all")}
    assert kept == {n for n, (_, r) in cases.items() if r is None}


def test_webvision_missing_truncated_and_out_of_range_labels(ray_cluster, tmp_path):
    rep = replicas.webvision(tmp_path / "raw")
    lst = tmp_path / "raw" / "info" / "train_filelist_flickr.txt"
    lst.write_text(lst.read_text() + "flickr/q0003/img007.jpg 7\n")  # a label out of range
    google = tmp_path / "raw" / "info" / "train_filelist_google.txt"
    lines = google.read_text().splitlines()
    google.write_text("\n".join([lines[0], "no_label.jpg", *lines[1:]]) + "\n")  # line 2: no label
    manifest = prepare_dataset("webvision", str(tmp_path / "raw"), str(tmp_path / "out"))
    reasons = {b["path"]: b["reason"] for b in manifest["bad_files"]}
    assert "label out of range: 7 not in [0, 3)" in reasons["flickr/q0003/img007.jpg"]
    assert (
        reasons["info/train_filelist_google.txt:2"] == "list line 2 is not '<path> <label>': 'no_label.jpg'"
    )
    for path, fragment in rep["bad"].items():
        assert fragment in reasons[path]
    got = {r["key"]: r["label"] for s in ("train", "val") for r in read_back(tmp_path / "out", s)}
    assert got == rep["expected"]
    assert manifest["splits"]["train"]["per_class"] == [4, 2, 1]  # good images only


def test_unreadable_shard_is_reported_not_fatal(ray_cluster, tmp_path, capsys):
    src_dir = tmp_path / "shards_in"
    prepare_dataset(
        "cifar10",
        str(replicas.cifar10(tmp_path / "raw") and tmp_path / "raw"),
        str(src_dir),
        shuffle=ShuffleSettings(enabled=False),
    )  # one shard per batch file
    broken = src_dir / "train" / "data_batch_3.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    manifest = prepare_dataset("shards", str(src_dir), str(tmp_path / "again"), splits=["train"])
    unreadable = [b for b in manifest["bad_files"] if "unreadable" in b["reason"]]
    assert len(unreadable) == 1 and "data_batch_3" in unreadable[0]["path"]
    assert manifest["splits"]["train"]["rows"] == sum(3 + b for b in (1, 2, 4, 5))
    assert manifest["splits"]["train"]["unreadable_files"] == 1
    out = capsys.readouterr().out
    assert "train: 24 images in 1 shards (shuffled order), 9 classes, imbalance ratio" in out
    assert ", 0 bad, 1 file(s) read only up to an error" in out
    assert "WARNING: 1 raw file(s) could not be read to the end" in out and "data_batch_3" in out


def test_rerun_keeps_finished_shards_and_redoes_only_the_missing(ray_cluster, tmp_path):
    replicas.cifar10(tmp_path / "raw")
    out = tmp_path / "out"
    plain = ShuffleSettings(enabled=False)
    prepare_dataset("cifar10", str(tmp_path / "raw"), str(out), shuffle=plain)
    # simulate a crash that lost one chunk: its shard and completion record are gone
    (out / "train" / "_done" / "data_batch_2.json").unlink()
    (out / "train" / "data_batch_2.parquet").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    manifest = prepare_dataset("cifar10", str(tmp_path / "raw"), str(out), shuffle=plain)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    assert set(after) == set(stamps) | {"data_batch_2.parquet"}
    assert all(after[k] == v for k, v in stamps.items())  # untouched
    assert manifest["splits"]["train"]["rows"] == sum(3 + b for b in range(1, 6))


def test_imagenet22k_tar_of_tars_through_prepare(ray_cluster, tmp_path):
    rep = replicas.imagenet22k(tmp_path / "raw")
    manifest = prepare_dataset("imagenet22k", str(rep["path"]), str(tmp_path / "out"))
    sizes = [rep["sizes"][w] for w in sorted(rep["sizes"])]
    sizes[2] -= 1  # the corrupt file
    assert manifest["splits"]["train"]["per_class"] == sizes
    assert [b["path"] for b in manifest["bad_files"]] == list(rep["bad"])


def test_s3_output_and_input_against_a_local_s3_server(ray_cluster, s3_server, tmp_path):
    replicas.cifar10(tmp_path / "raw")
    uri = s3_server("cifar-shards")
    manifest = prepare_dataset("cifar10", str(tmp_path / "raw"), uri, splits=["test"])
    assert manifest["splits"]["test"]["rows"] == 20
    src = open_source("shards", uri)
    back = [r for c in src.chunks("test") for r in src.read(c)]
    images, labels, _ = replicas.exact_samples("cifar10")
    assert [r["label"] for r in back] == labels
    np.testing.assert_array_equal(np.stack([decode_image(r["image"])[0] for r in back]), images)
    # and a second prepare from S3 shards to a local folder
    again = prepare_dataset("shards", uri, str(tmp_path / "local"))
    assert again["splits"]["test"]["rows"] == 20
    assert pq.read_table(tmp_path / "local" / again["splits"]["test"]["shards"][0]["file"]).num_rows == 20


def test_another_input_into_a_used_out_folder_is_refused_before_any_work(ray_cluster, tmp_path):
    """Re-running into ``out`` resumes; other input there would have mixed old shards into the new."""
    replicas.cifar10(tmp_path / "raw")
    replicas.cifar10(tmp_path / "other")
    out = tmp_path / "out"
    plain = ShuffleSettings(enabled=False)
    prepare_dataset("cifar10", str(tmp_path / "raw"), str(out), shuffle=plain)
    before = (out / "manifest.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        ValueError, match=r"out=.*out holds the shards of another prepare: dataset.root: .*raw.* -> .*other"
    ):
        prepare_dataset("cifar10", str(tmp_path / "other"), str(out), shuffle=plain)
    with pytest.raises(ValueError, match=r"shuffle.enabled: False -> True.*a new out folder"):
        prepare_dataset("cifar10", str(tmp_path / "raw"), str(out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps  # nothing touched
    assert (out / "manifest.json").read_bytes() == before
    again = prepare_dataset("cifar10", str(tmp_path / "raw"), str(out), shuffle=plain)  # the same input
    assert again["splits"]["train"]["rows"] == sum(3 + b for b in range(1, 6))


def test_a_flat_folder_prepared_with_a_held_out_split(ray_cluster, tmp_path):
    """``holdout.fraction``: the only split becomes train + val, disjoint, complete, val consolidated."""
    raw, tiny = tmp_path / "raw", encode(pattern(4, 4, 0), "PNG")
    sizes = {"cat": 300, "dog": 120, "eel": 30}
    for cls, n in sizes.items():
        (raw / cls).mkdir(parents=True)
        for i in range(n):
            (raw / cls / f"{i:04d}.png").write_bytes(tiny)
            (raw / cls / f"{i:04d}.json").write_bytes(b"{}")  # beside each image, as crawlers write
    out, holdout = tmp_path / "out", HoldOutSettings(fraction=0.2)
    manifest = prepare_dataset("imagefolder", str(raw), str(out), holdout=holdout)
    assert sorted(manifest["splits"]) == ["train", "val"]
    skipped = [manifest["splits"][s]["skipped_files"].get(".json", 0) for s in ("train", "val")]
    assert sum(skipped) == sum(sizes.values()) and min(skipped) > 0  # each counted once, in its split
    assert manifest["holdout"] == {"fraction": 0.2, "split": "all", "to": "val", "seed": 0}
    train, val = read_back(out, "train"), read_back(out, "val")
    assert manifest["splits"]["train"]["rows"] == len(train) and manifest["splits"]["val"]["rows"] == len(val)
    train_keys, val_keys = {r["key"] for r in train}, {r["key"] for r in val}
    assert not train_keys & val_keys
    assert train_keys | val_keys == {f"{c}/{i:04d}.png" for c, n in sizes.items() for i in range(n)}
    per_class = np.bincount([r["label"] for r in val], minlength=3)
    assert manifest["splits"]["val"]["per_class"] == per_class.tolist()
    for held, n in zip(per_class, sizes.values(), strict=True):  # Binomial(n, 0.2), within 5 sd
        assert abs(held - 0.2 * n) <= 5 * np.sqrt(n * 0.2 * 0.8) + 1
    assert len(manifest["splits"]["val"]["shards"]) == 1  # not one small shard per class folder
    with pytest.raises(ValueError, match=r"holdout.fraction: 0.2 -> 0.3"):
        prepare_dataset("imagefolder", str(raw), str(out), holdout=HoldOutSettings(fraction=0.3))
    with pytest.raises(ValueError, match=r"holdout.fraction: 0.2 -> not set"):  # nor without a hold-out
        prepare_dataset("imagefolder", str(raw), str(out))
    assert sorted(json.loads((out / "manifest.json").read_text())["splits"]) == ["train", "val"]


def test_an_empty_class_is_named_and_a_split_without_any_image_is_refused(ray_cluster, tmp_path, capsys):
    raw, tiny = tmp_path / "raw", encode(pattern(4, 4, 0), "PNG")
    for name in ("animals/cat/1.png", "animals/cat/2.png", "plants/fern/3.png"):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(tiny)
    (raw / "empty class").mkdir()
    manifest = prepare_dataset("imagefolder", str(raw), str(tmp_path / "out"))
    assert manifest["classes"] == ["animals", "empty class", "plants"]  # top-level folders, as torchvision
    assert manifest["splits"]["all"]["per_class"] == [2, 0, 1]
    assert "WARNING: all: 1 class(es) without any image: 'empty class'" in capsys.readouterr().out
    bare = tmp_path / "bare"
    (bare / "cat").mkdir(parents=True)
    (bare / "cat" / "readme.txt").write_text("not an image")
    (bare / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"no image was read for split\(s\) all under .*bare \(1 bad files"):
        prepare_dataset("imagefolder", str(bare), str(tmp_path / "out2"))


def test_a_split_that_cannot_be_read_is_refused_before_any_split_is_written(tmp_path):
    replicas.stl10(tmp_path / "raw")
    unlabeled = tmp_path / "raw" / "stl10_binary" / "unlabeled_X.bin"
    unlabeled.write_bytes(unlabeled.read_bytes()[:-1000])  # train+unlabeled comes after train
    with pytest.raises(ValueError, match=r"unlabeled_X.bin is .* bytes, not a whole number"):
        prepare_dataset("stl10", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unknown_split_fails_before_any_work(ray_cluster, tmp_path):
    replicas.cifar10(tmp_path / "raw")
    with pytest.raises(ValueError, match="no split 'val'"):
        prepare_dataset("cifar10", str(tmp_path / "raw"), str(tmp_path / "out"), splits=["val"])
    assert not (tmp_path / "out").exists()


def test_an_error_raised_inside_a_ray_task_is_not_taken_for_bad_input(ray_cluster, capsys):
    from pipelines.core.errors import run_command

    @ray_cluster.remote
    def broken() -> None:
        raise ValueError("a bug in a task")

    def bad_input() -> str:
        raise ValueError("dataset.root holds no such files")

    stops = {ValueError: ("error: ", 2)}
    assert run_command(bad_input, stops) == 2
    assert capsys.readouterr().err == "error: dataset.root holds no such files\n"
    with pytest.raises(ValueError, match="a bug in a task"):  # with its traceback, not one line
        run_command(lambda: ray_cluster.get(broken.remote()), stops)
