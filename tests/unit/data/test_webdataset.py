"""WebDataset tar shards read by the ``shards`` source: samples, labels, truncated tars."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipelines.data.shard_writer import read_chunk
from pipelines.data.sources import open_source
from tests.helpers.data_fixtures import encode, pattern


def write_tar(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, fields in samples:
            for field, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def samples(n: int, start: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (f"part/{i:04d}", {"jpg": encode(pattern(8, 8, i), "JPEG"), "cls": str(i % 3).encode()})
        for i in range(start, start + n)
    ]


def test_samples_labels_and_a_sample_without_its_label(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    no_label = [("part/9999", {"jpg": encode(pattern(8, 8, 9), "JPEG")})]
    write_tar(tmp_path / "train-000.tar", samples(5) + no_label)
    write_tar(tmp_path / "unlabeled-000.tar", no_label)
    src = open_source("shards", str(tmp_path))
    assert src.splits == ("train", "unlabeled") and src.classes() == ["a", "b", "c"]
    recs = [r for c in src.chunks("train") for r in src.read(c)]
    assert [(r["key"], r["label"]) for r in recs[:5]] == [
        (f"train-000.tar/part/{i:04d}", i % 3) for i in range(5)
    ]
    assert recs[5]["problem"] == "no .cls member (the label) in this sample"
    rows = read_chunk(src, src.chunks("train")[0], num_classes=3, max_pixels=10**6)
    assert rows.labels == [0, 1, 2, 0, 1]
    assert rows.log.bad == [
        {"path": "train-000.tar/part/9999", "reason": "no .cls member (the label) in this sample"}
    ]
    unlabeled = read_chunk(src, src.chunks("unlabeled")[0], num_classes=3, max_pixels=10**6)
    assert unlabeled.labels == [-1] and unlabeled.log.bad == []  # allowed where a split is unlabelled


def test_a_truncated_tar_keeps_the_whole_samples_and_says_it_ends_early(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    write_tar(tmp_path / "whole.tar", samples(6))
    data = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "train-000.tar").write_bytes(data[: int(len(data) * 0.6)])  # an interrupted copy
    src = open_source("shards", str(tmp_path))
    with pytest.raises(OSError, match=r"the tar ends early or is corrupt after \d whole sample"):
        list(src.read(src.chunks("train")[0]))
    rows = read_chunk(src, src.chunks("train")[0], num_classes=3, max_pixels=10**6)
    kept = len(rows.labels)
    assert 1 <= kept < 6 and rows.labels == [i % 3 for i in range(kept)]  # no partial sample kept
    [bad] = rows.log.bad
    assert bad["reason"].startswith(
        f"unreadable: OSError: the tar ends early or is corrupt after {kept} whole"
    )


def test_a_tar_cut_at_a_member_boundary_is_caught_by_its_missing_end_blocks(tmp_path):
    """tarfile takes such a tar for a whole one: the last sample would lose its label unnoticed."""
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    write_tar(tmp_path / "whole.tar", samples(4))
    with tarfile.open(tmp_path / "whole.tar") as tf:
        cls_of_last = tf.getmember("part/0003.cls")
    cut = (tmp_path / "whole.tar").read_bytes()[: cls_of_last.offset]  # before the last sample's .cls
    (tmp_path / "train-000.tar").write_bytes(cut)
    src = open_source("shards", str(tmp_path))
    rows = read_chunk(src, src.chunks("train")[0], num_classes=3, max_pixels=10**6)
    assert rows.labels == [0, 1, 2]  # the three whole samples; not the fourth without its label
    assert [b["reason"] for b in rows.log.bad] == [
        "unreadable: OSError: the tar lacks its end-of-archive blocks (cut short?) after 3 whole sample(s)"
    ]
    with pytest.raises(
        FileNotFoundError, match=r"no manifest.json and no classes.txt: .*one class name a line"
    ):
        (tmp_path / "classes.txt").unlink()
        open_source("shards", str(tmp_path)).classes()


def test_a_compressed_tar_reads_whole_and_a_cut_one_still_says_so(tmp_path):
    import gzip

    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    write_tar(tmp_path / "whole.tar", samples(4))
    packed = gzip.compress((tmp_path / "whole.tar").read_bytes())
    (tmp_path / "train-000.tar").write_bytes(packed)  # gzip data under a .tar name
    (tmp_path / "train-001.tar").write_bytes(packed[: len(packed) * 2 // 3])
    src = open_source("shards", str(tmp_path))
    whole, cut = (read_chunk(src, c, num_classes=3, max_pixels=10**6) for c in src.chunks("train"))
    assert whole.labels == [0, 1, 2, 0] and whole.log.bad == []
    assert len(cut.labels) < 4 and cut.log.bad[0]["reason"].startswith(
        "unreadable: OSError: the tar ends early or is corrupt after"
    )
