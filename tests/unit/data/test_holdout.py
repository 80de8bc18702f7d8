"""Holding out a share of a split (``prepare``'s ``holdout.*``): disjoint, complete, stable, per class."""

from __future__ import annotations

import math
import pickle
from collections import Counter

import pytest

from pipelines.data.sources import open_source
from pipelines.data.sources.holdout import HoldOut, HoldOutSettings
from tests.helpers import replicas
from tests.helpers.data_fixtures import encode, pattern


def keys_by_split(source) -> dict[str, list[tuple[str, int]]]:
    return {
        s: [(r["key"], r["label"]) for c in source.chunks(s) for r in source.read(c)] for s in source.splits
    }


def flat_folder(root, sizes: dict[str, int]) -> None:
    tiny = encode(pattern(4, 4, 0), "PNG")
    for cls, n in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{cls}_{i:05d}.png").write_bytes(tiny)


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_a_flat_folder_is_divided_into_train_and_val_disjoint_complete_and_per_class(tmp_path):
    sizes = {"big": 2000, "mid": 400, "small": 60}  # imbalanced, 33:1
    flat_folder(tmp_path, sizes)
    base = open_source("imagefolder", str(tmp_path))
    assert base.splits == ("all",)
    source = HoldOut(base, HoldOutSettings(fraction=0.1))
    assert source.splits == ("train", "val")
    assert source.classes() == base.classes()
    got = keys_by_split(source)
    train, val = set(got["train"]), set(got["val"])
    assert not train & val
    assert train | val == set(keys_by_split(base)["all"])
    per_class = Counter(label for _, label in val)
    for label, (cls, n) in enumerate(sorted(sizes.items())):
        assert within_binomial(per_class[label], n, 0.1), (cls, per_class[label], n)
    # the same choice in a fresh object and after pickling (what a Ray task receives)
    again = pickle.loads(
        pickle.dumps(HoldOut(open_source("imagefolder", str(tmp_path)), HoldOutSettings(0.1)))
    )
    assert set(keys_by_split(again)["val"]) == val
    # another seed holds out other images: about 0.1 * 0.1 of them overlap by chance
    other = set(keys_by_split(HoldOut(base, HoldOutSettings(fraction=0.1, seed=1)))["val"])
    assert within_binomial(len(other), 2460, 0.1) and len(other & val) < 0.3 * len(val)


def test_the_only_split_of_an_imagenet22k_tar_and_a_named_split_among_several(tmp_path):
    rep = replicas.imagenet22k(tmp_path / "in22k")
    source = HoldOut(open_source("imagenet22k", str(rep["path"])), HoldOutSettings(0.25, to="test"))
    assert source.splits == ("train", "test")
    got = keys_by_split(source)
    assert len(got["train"]) + len(got["test"]) == sum(rep["sizes"].values())
    assert within_binomial(len(got["test"]), sum(rep["sizes"].values()), 0.25)
    # a folder with train/ and test/: dividing train adds val and keeps test as it is
    for split, n in (("train", 500), ("test", 30)):
        flat_folder(tmp_path / "tree" / split, {"a": n, "b": n})
    tree = open_source("imagefolder", str(tmp_path / "tree"))
    source = HoldOut(tree, HoldOutSettings(0.2, split="train"))
    assert source.splits == ("train", "val", "test")
    got = keys_by_split(source)
    assert got["test"] == keys_by_split(tree)["test"]
    assert len(got["train"]) + len(got["val"]) == 1000 and within_binomial(len(got["val"]), 1000, 0.2)
    assert all(k.startswith("train/") for k, _ in got["val"])


def test_bad_holdout_settings_name_the_key_and_the_fix(tmp_path):
    for split in ("train", "val", "test"):
        flat_folder(tmp_path / split, {"a": 2})
    tree = open_source("imagefolder", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"holdout.split is not set .* splits train, val, test: set holdout.split="
    ):
        HoldOut(tree, HoldOutSettings(0.1))
    with pytest.raises(
        ValueError, match=r"holdout.split=train would write the splits train and val, but .* already has val"
    ):
        HoldOut(tree, HoldOutSettings(0.1, split="train"))
    with pytest.raises(
        ValueError,
        match=r"holdout.split=all: .*no split 'all'; choose one of train, val, test; set holdout.split=",
    ):
        HoldOut(tree, HoldOutSettings(0.1, split="all"))
    flat = open_source("imagefolder", str(tmp_path / "val"))  # one split: all
    with pytest.raises(
        ValueError, match=r"holdout.to=all: .* taken from \(all, which becomes train .*holdout.to=val"
    ):
        HoldOut(flat, HoldOutSettings(0.1, to="all"))
    with pytest.raises(ValueError, match=r"holdout.fraction=1.0 must be in \[0, 1\)"):
        HoldOutSettings.from_config({"fraction": 1.0})
    with pytest.raises(ValueError, match=r"holdout.to='train': name the held-out split"):
        HoldOutSettings.from_config({"fraction": 0.1, "to": "train"})
    with pytest.raises(ValueError, match=r"holdout.fractoin is not a setting; use fraction, seed, split, to"):
        HoldOutSettings.from_config({"fractoin": 0.1})
    assert not HoldOutSettings.from_config({"fraction": 0.0}).enabled
