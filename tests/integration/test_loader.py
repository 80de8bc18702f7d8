"""Ray Data feeding: real CIFAR-10 shards, exact imbalance counts, bad rows, a 2-worker split."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.config_schema import with_defaults
from pipelines.data.decode import TooManyBadImagesError
from pipelines.data.loader import training_datasets
from pipelines.data.monitor import monitor
from pipelines.data.recipes import view_recipes
from tests.helpers import replicas
from tests.helpers.data_fixtures import corrupt_cases, encode, pattern
from tests.helpers.train_loops import SCHEDULER_SETTINGS as OURS

CIFAR = str(replicas.SHARED / "cifar10-jpeg")


def cifar_cfg(**imbalance):
    return with_defaults(
        "dataset",
        {
            "name": "cifar10_jpeg",
            "root": CIFAR,
            "train_split": "test",
            "eval_split": "test",
            "imbalance": {"rule": "none", **imbalance},
            "max_bad_fraction": 0.01,
            "max_pixels": 64_000_000,
        },
    )


def histogram(ds, num_classes=10):
    hist = np.zeros(num_classes, dtype=np.int64)
    for batch in ds.iter_batches(batch_size=512, batch_format="numpy"):
        hist += np.bincount(batch["label"], minlength=num_classes)
    return hist.tolist()


def test_imbalanced_cifar_streams_the_exact_counts_as_five_uint8_views(ray_cluster):
    data = training_datasets(cifar_cfg(rule="cacr_cifar10_linear"), view_recipes("cifar", 5), eval_size=32)
    expected = [100 * (c + 1) for c in range(10)]  # int((c + 1) / 10 * 1000) on the 1000-per-class split
    assert data.train_counts == expected and data.unreadable == []
    batch = next(iter(data.datasets["train"].iter_batches(batch_size=64, batch_format="numpy")))
    assert batch["views"].shape == (64, 5, 3, 32, 32) and batch["views"].dtype == np.uint8
    assert histogram(data.datasets["train"]) == expected


def test_a_split_the_shards_lack_is_an_error_naming_the_key_to_set() -> None:
    for key in ("train_split", "eval_split"):
        cfg = {**cifar_cfg(), key: "val"}
        with pytest.raises(
            ValueError,
            match=rf"dataset\.{key}=val: .* has no split 'val'; choose one of .*test.*; set dataset\.{key}=",
        ):
            training_datasets(cfg, view_recipes("cifar", 2), eval_size=32)


def test_judging_on_the_training_split_is_warned_with_the_fix(ray_cluster, capsys):
    training_datasets(cifar_cfg(), view_recipes("cifar", 2), eval_size=32)  # test -> test
    out = capsys.readouterr().out
    assert "WARNING: dataset.eval_split is the training split 'test'" in out and "holdout.fraction" in out
    training_datasets({**cifar_cfg(), "train_split": "train"}, view_recipes("cifar", 2), eval_size=32)
    assert "WARNING: dataset.eval_split" not in capsys.readouterr().out


def test_a_capped_training_set_says_its_counts_are_the_splits_before_the_sample(ray_cluster, capsys):
    data = training_datasets({**cifar_cfg(), "max_train_images": 100}, view_recipes("cifar", 2), eval_size=32)
    assert data.train_size == 100 and data.train_counts == [1000] * 10  # shot groups: the classes' counts
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training set:"))
    assert line.startswith(
        "training set: 100 images, a class-stratified sample (dataset.max_train_images) of 10,000"
    )
    assert line.endswith(
        "per class before the sample [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]"
    )


def test_one_worker_reads_the_training_stream_whole_and_several_split_it(ray_cluster):
    """A single worker needs no split coordinator (one actor process fewer per run or trial)."""
    recipes = view_recipes("cifar", 2)
    one = training_datasets(cifar_cfg(), recipes, eval_size=32, workers=1, task_cpus=0.5)
    two = training_datasets(cifar_cfg(), recipes, eval_size=32, workers=2)
    assert one.data_config._datasets_to_split == [] and two.data_config._datasets_to_split == ["train"]
    batch = next(iter(one.datasets["train"].iter_batches(batch_size=64, batch_format="numpy")))
    assert batch["views"].shape == (64, 2, 3, 32, 32)  # half-CPU read tasks (a trial's share) run


def test_eval_split_is_one_centre_view_of_every_image(ray_cluster):
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = True  # as in a search trial's process
    data = training_datasets(cifar_cfg(), view_recipes("cifar", 2), eval_size=32)
    batch = next(iter(data.datasets["eval"].iter_batches(batch_size=10, batch_format="numpy")))
    assert batch["views"].shape == (10, 1, 3, 32, 32)
    for ds in data.datasets.values():  # transient errors in read tasks are retried (Ray: none are)
        assert ds.context.max_map_retries == 3 and "ActorUnavailableError" in ds.context.retried_map_errors
        assert not ds.context.enable_progress_bars  # a search printed thousands of bar lines


def _bad_shards(tmp_path):
    cases = corrupt_cases()
    rows = {"image": [], "label": [], "key": []}
    for i, (name, (data, _)) in enumerate(cases.items()):
        rows["image"].append(data)
        rows["label"].append(i % 3)
        rows["key"].append(name)
    rows["image"].append(encode(pattern(8, 8, 9)))
    rows["label"].append(7)  # out of range for 3 classes
    rows["key"].append("label7.png")
    root = tmp_path / "shards"
    root.mkdir()
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf)
    (root / "train-00000.parquet").write_bytes(buf.getvalue())
    (root / "train-00001.parquet").write_bytes(b"garbage, not parquet")
    all_bad = pa.table({"image": [b"", b"not an image"], "label": [0, 1], "key": ["allbad-1", "allbad-2"]})
    pq.write_table(all_bad, root / "train-00002.parquet")  # a row group with no good image at all
    (root / "test-00000.parquet").write_bytes(buf.getvalue())
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root, cases


def test_bad_rows_are_dropped_counted_and_reported(ray_cluster, tmp_path):
    root, cases = _bad_shards(tmp_path)
    cfg = with_defaults(
        "dataset",
        {
            "name": "shards",
            "root": str(root),
            "train_split": "train",
            "eval_split": "test",
            "imbalance": {"rule": "none"},
            "max_bad_fraction": 0.5,
        },
    )
    mon = monitor("bad-rows-test", max_bad_fraction=0.6, min_seen=1)
    data = training_datasets(cfg, view_recipes("cifar", 2), eval_size=16, run="bad-rows-test")
    assert len(data.unreadable) == 1 and "train-00001.parquet" in data.unreadable[0]["path"]
    in_range = [i % 3 for i in range(len(cases))] + [0, 1]  # label 7 is counted nowhere
    assert data.train_counts == np.bincount(in_range, minlength=3).tolist()
    good = [n for n, (d, r) in cases.items() if r is None]
    assert sum(histogram(data.datasets["train"], 3)) == len(good)
    snap = ray_cluster.get(mon.snapshot.remote())
    reasons = {b["path"]: b["reason"] for b in snap["bad_files"]}
    expected = {n: r for n, (d, r) in cases.items() if r is not None}
    expected["label7.png"] = "label out of range: 7 not in [0, 3)"
    expected["allbad-1"], expected["allbad-2"] = "empty file", "not an image"
    assert set(reasons) == set(expected)
    assert all(expected[k] in v for k, v in reasons.items())
    assert snap["good"] == len(good)
    ray_cluster.get(mon.check.remote())  # 8 bad of 14 is not over the 0.6 limit
    strict = monitor("bad-rows-strict", max_bad_fraction=0.1, min_seen=1)
    ray_cluster.get(strict.add.remote(snap["good"], snap["bad_files"]))
    with pytest.raises(TooManyBadImagesError, match="8 bad of 14 images"):
        ray_cluster.get(strict.check.remote())


def test_each_train_worker_streams_its_own_part(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tests.helpers.train_loops import count_rows

    data = training_datasets(cifar_cfg(rule="exponential", ratio=10), view_recipes("cifar", 3), eval_size=32)
    trainer = TorchTrainer(
        count_rows,
        train_loop_config={"num_classes": 10},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=data.datasets,
        dataset_config=data.data_config,
        run_config=RunConfig(name="split-test", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    rank0 = result.return_value
    assert rank0["shapes"] == [(3, 3, 32, 32)]
    assert rank0["scheduling"] == OURS  # the worker got the pipeline's
    assert 0 < sum(rank0["hist"]) < sum(data.train_counts)  # a part, not everything


def test_class_balanced_resampling_equalises_the_stream(ray_cluster):
    cfg = cifar_cfg(rule="cacr_cifar10_linear", balanced=True)
    data = training_datasets(cfg, view_recipes("cifar", 2), eval_size=32)
    assert data.train_counts == [550] * 10  # 5,500 kept images drawn evenly over 10 classes
    assert histogram(data.datasets["train"]) == [550] * 10


def test_every_worker_process_of_the_job_gets_the_scheduler_settings(ray_cluster):
    """Ray Data's split coordinator is an actor of the job that imports nothing of this project: a
    fresh actor process (its own env var forces a new one) that imports nothing of ours sees them."""

    @ray_cluster.remote(num_cpus=0, runtime_env={"env_vars": {"CACR_FRESH_WORKER": "1"}})
    class Probe:
        def settings(self):
            import sys

            from pipelines.data import scheduling  # importing it applies nothing

            return scheduling.current(), "pipelines.data.loader" in sys.modules

    settings, loader_imported = ray_cluster.get(Probe.remote().settings.remote())
    assert not loader_imported
    assert settings == OURS


def one_row_group_of_photos(folder: pathlib.Path, n: int = 100) -> dict:
    """``n`` small JPEG photos in one row group, and the training feed's arguments at 5 x 224 px."""
    from pipelines.core.storage import Store
    from pipelines.data.read_tasks import ReadPlan

    table = pa.table(
        {
            "image": [encode(pattern(40, 30, seed=i), "JPEG") for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "key": [f"photo{i}" for i in range(n)],
        }
    )
    pq.write_table(table, folder / "one.parquet", row_group_size=n)
    return dict(
        store=Store.open("/"),
        plan=ReadPlan([{"file": str(folder / "one.parquet"), "row_group": 0}]),
        recipes=view_recipes("imagenet_moco_v2", 5),
        seed=0,
        run=None,
        num_classes=3,
        max_pixels=64_000_000,
        draft=(448, 448),
    )


def test_a_row_group_of_photos_is_decoded_and_cropped_in_pieces_bounded_in_bytes(tmp_path):
    """100 photos in one row group at 5 x 224 px: pieces of 89 and 11 (64 MiB / 752,640 bytes per
    image), every label in order, each piece's views within the bound."""
    from pipelines.data.read_tasks import BLOCK_BYTES, read_decode_view, rows_per_block

    args = one_row_group_of_photos(tmp_path)
    assert rows_per_block(args["recipes"]) == (64 * 2**20) // (5 * 3 * 224 * 224) == 89
    blocks = list(read_decode_view({"slot": np.array([0])}, **args))
    assert [len(b["label"]) for b in blocks] == [89, 11]
    assert all(b["views"].nbytes <= BLOCK_BYTES and b["views"].shape[1:] == (5, 3, 224, 224) for b in blocks)
    assert np.concatenate([b["label"] for b in blocks]).tolist() == [i % 3 for i in range(100)]


def test_each_full_piece_leaves_its_read_task_as_its_own_block(ray_cluster, tmp_path):
    """Under Ray, the same row group reaches the consumer as two blocks (89 + 11 rows), so the first
    batch waits for one piece, not for the task's whole slot. Ray's default block target (128 MiB)
    joined them into one 100-row block (75 MB)."""
    from pipelines.data.read_tasks import stream

    args = one_row_group_of_photos(tmp_path)
    ds = stream(args.pop("plan"), args)
    blocks = [len(b["label"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert blocks == [89, 11]


def test_stl10_unlabeled_rows_pretrain_but_stay_out_of_banks_and_counts(ray_cluster, tmp_path):
    from pipelines.data.prepare import prepare_dataset

    rep = replicas.stl10(tmp_path / "raw")  # 7 labelled train images, 6 unlabelled, 4 test
    prepare_dataset("stl10", str(tmp_path / "raw"), str(tmp_path / "out"), splits=["train+unlabeled", "test"])
    cfg = with_defaults(
        "dataset",
        {
            "name": "shards",
            "root": str(tmp_path / "out"),
            "train_split": "train+unlabeled",
            "eval_split": "test",
            "imbalance": {"rule": "none"},
            "max_bad_fraction": 0.01,
        },
    )
    labelled = np.bincount(rep["train"][1], minlength=10).tolist()
    data = training_datasets(cfg, view_recipes("stl10", 2), eval_size=16, bank_size=5)
    assert data.train_counts == labelled and data.train_size == 13  # every image pretrains
    rows = [b["label"] for b in data.datasets["train"].iter_batches(batch_size=64, batch_format="numpy")]
    assert sorted(np.concatenate(rows).tolist()) == sorted(rep["train"][1] + [-1] * 6)
    bank = np.concatenate([b["label"] for b in data.datasets["bank"].iter_batches(batch_format="numpy")])
    assert len(bank) == 5 and (bank >= 0).all()
    whole = training_datasets(cfg, view_recipes("stl10", 2), eval_size=16, whole_bank=True)
    bank = np.concatenate([b["label"] for b in whole.datasets["bank"].iter_batches(batch_format="numpy")])
    assert sorted(bank.tolist()) == sorted(rep["train"][1])  # the probe trains on labelled images only
