"""Every source on a byte-exact miniature replica (and the real CIFAR-10 shards): counts, labels, pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.decode import decode_image
from pipelines.data.sources import SOURCES, open_source
from tests.helpers import replicas
from tests.helpers.data_fixtures import encode, pattern


def read_all(source, split):
    return [r for chunk in source.chunks(split) for r in source.read(chunk)]


def test_registry_names_every_source_of_the_issue():
    assert set(SOURCES) == {
        "cifar10",
        "cifar100",
        "stl10",
        "cifar10_jpeg",
        "imagefolder",
        "imagenet1k",
        "imagenet100",
        "webvision",
        "imagenet22k",
        "shards",
    }
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of"):
        open_source("mnist", "/tmp")
    with pytest.raises(ValueError, match=r"dataset\.root is not set"):
        open_source("cifar10", "")


def test_cifar10_pickles_are_pixel_exact(tmp_path):
    rep = replicas.cifar10(tmp_path)
    src = open_source("cifar10", str(tmp_path))  # the parent of cifar-10-batches-py works too
    assert src.classes() == rep["classes"]
    test = read_all(src, "test")
    images, labels = rep["test"]
    assert [r["label"] for r in test] == labels
    assert labels == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    np.testing.assert_array_equal(np.stack([r["pixels"] for r in test]), images)
    # formats doc: the first red row of test image 0 starts 158 159 165 166 160 156 162 159
    assert test[0]["pixels"][0, :8, 0].tolist() == [158, 159, 165, 166, 160, 156, 162, 159]
    train = read_all(src, "train")
    assert len(train) == sum(len(v[1]) for v in rep["train"].values())
    np.testing.assert_array_equal(train[0]["pixels"], rep["train"][1][0][0])


def test_cifar100_pickles_use_fine_labels(tmp_path):
    rep = replicas.cifar100(tmp_path)
    src = open_source("cifar100", str(tmp_path / "cifar-100-python"))
    test = read_all(src, "test")
    assert [r["label"] for r in test][:5] == [49, 33, 72, 51, 71]
    assert src.classes()[49] == "mountain"
    np.testing.assert_array_equal(np.stack([r["pixels"] for r in test]), rep["test"][0])


def test_missing_cifar_folder_says_what_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"set dataset\.root to the extracted cifar-10-batches-py"):
        open_source("cifar10", str(tmp_path))


def test_stl10_binary_orientation_labels_and_splits(tmp_path):
    rep = replicas.stl10(tmp_path)
    src = open_source("stl10", str(tmp_path))
    train = read_all(src, "train")
    imgs, labels = rep["train"]
    assert [r["label"] for r in train] == labels
    np.testing.assert_array_equal(np.stack([r["pixels"] for r in train]), imgs)
    assert train[0]["pixels"][0, :5, 0].tolist() == [0, 1, 2, 3, 4]  # the top row, not the column
    both = read_all(src, "train+unlabeled")
    assert len(both) == 7 + 6 and [r["label"] for r in both][-6:] == [-1] * 6
    assert src.fold_indices()[0] == [0, 3, 6]
    with pytest.raises(ValueError, match=r"no split 'val'; choose one of train, test"):
        src.chunks("val")


def test_stl10_files_cut_short_and_labels_out_of_range_name_the_file(tmp_path):
    replicas.stl10(tmp_path)
    d = tmp_path / "stl10_binary"
    labels = (d / "test_y.bin").read_bytes()
    (d / "test_y.bin").write_bytes(bytes([labels[0], 0, 11, labels[3]]))  # stored 0 and 11: not 1..10
    recs = read_all(open_source("stl10", str(tmp_path)), "test")
    assert [r.get("problem") for r in recs] == [
        None,
        "test_y.bin byte 1: label 0 is not in 1..10",
        "test_y.bin byte 2: label 11 is not in 1..10",
        None,
    ]
    (d / "test_y.bin").write_bytes(labels[:3])
    with pytest.raises(ValueError, match=r"test_y.bin holds 3 labels for the 4 images of test_X.bin"):
        open_source("stl10", str(tmp_path)).chunks("test")
    data = (d / "unlabeled_X.bin").read_bytes()
    (d / "unlabeled_X.bin").write_bytes(data[:-1000])
    with pytest.raises(
        ValueError, match=r"unlabeled_X.bin is 164,888 bytes, not a whole number of 27,648-byte"
    ):
        open_source("stl10", str(tmp_path)).chunks("train+unlabeled")


def test_a_missing_cifar_batch_file_is_an_input_error_naming_it(tmp_path):
    replicas.cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    src = open_source("cifar10", str(tmp_path))
    assert len(src.chunks("test")) == 1
    with pytest.raises(
        FileNotFoundError, match=r"train batch file\(s\) missing under .*: data_batch_3; extract"
    ):
        src.chunks("train")


def test_cifar10_jpeg_real_shards():
    src = open_source("cifar10_jpeg", str(replicas.SHARED / "cifar10-jpeg"))
    assert src.splits == ("test", "train")
    chunk = src.chunks("test")[0]
    rows = []
    for r in src.read(chunk):
        rows.append(r)
        if len(rows) == 20:
            break
    # test shards are round-robin by class: row r is class r % 10
    assert [r["label"] for r in rows] == [i % 10 for i in range(20)]
    assert rows[0]["key"] == "test/airplane/0000.jpg"
    pixels, why = decode_image(rows[0]["image"])
    assert why is None and pixels.shape == (32, 32, 3)


def test_cifar10_jpeg_is_within_jpeg_error_of_the_exact_samples():
    """Exact test image i is test/<class>/NNNN.jpg with NNNN = earlier images of its class."""
    images, labels, names = replicas.exact_samples("cifar10")
    src = open_source("cifar10_jpeg", str(replicas.SHARED / "cifar10-jpeg"))
    wanted, seen = {}, {}
    for i, lab in enumerate(labels):
        wanted[f"test/{names[lab]}/{seen.get(lab, 0):04d}.jpg"] = i
        seen[lab] = seen.get(lab, 0) + 1
    found = {}
    for chunk in src.chunks("test"):
        for r in src.read(chunk):
            if r["key"] in wanted:
                found[wanted[r["key"]]] = decode_image(r["image"])[0]
    assert len(found) == 20
    for i, pixels in found.items():
        assert np.abs(pixels.astype(int) - images[i]).mean() < 9  # the README's 4.5 to 8.1


def test_imagenet1k_flat_val_is_labelled_through_the_devkit(tmp_path):
    expected = replicas.imagenet(tmp_path)
    src = open_source("imagenet1k", str(tmp_path))
    assert src.classes() == sorted(replicas.WNIDS)
    got = {r["key"]: r["label"] for s in ("train", "val") for r in read_all(src, s)}
    assert got == expected
    for r in read_all(src, "train"):
        assert decode_image(r["image"])[1] is None  # PNG-as-JPEG, CMYK, greyscale all decode


def test_imagenet1k_reorganised_val_folders(tmp_path):
    replicas.imagenet(tmp_path, val_layout="folders")
    for wnid in replicas.WNIDS[:2]:
        (tmp_path / "val" / wnid).mkdir(parents=True)
        (tmp_path / "val" / wnid / "ILSVRC2012_val_00000009.JPEG").write_bytes(b"x")
    src = open_source("imagenet1k", str(tmp_path))
    assert [r["label"] for r in read_all(src, "val")] == [0, 1]


def test_imagenet100_keeps_only_its_classes(tmp_path):
    expected = replicas.imagenet(tmp_path)
    with pytest.raises(FileNotFoundError, match="99 class folders missing"):
        open_source("imagenet100", str(tmp_path)).classes()
    from pipelines.data.sources.folders import ImageNet100

    class Tiny(ImageNet100):
        wnids = ("n02869837", "n01443537")

    src = Tiny(str(tmp_path))
    assert src.classes() == ["n01443537", "n02869837"]
    got = {r["key"]: r["label"] for s in ("train", "val") for r in read_all(src, s)}
    want = {
        k: ["n01443537", "n02869837"].index(replicas.WNIDS[v])
        for k, v in expected.items()
        if replicas.WNIDS[v] in ("n02869837", "n01443537")
    }
    assert got == want


def test_imagefolder_single_split(tmp_path):
    for c in ("b", "a"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "1.png").write_bytes(b"x")
        (tmp_path / c / "notes.txt").write_text("not listed")
    src = open_source("imagefolder", str(tmp_path))
    assert src.splits == ("all",) and src.classes() == ["a", "b"]
    records = read_all(src, "all")
    assert [(r["key"], r["label"]) for r in records if "skipped" not in r] == [("a/1.png", 0), ("b/1.png", 1)]
    # a file without an image extension is passed on as skipped (counted by prepare), never read
    assert sorted((r["key"], r["skipped"], r["image"]) for r in records if "skipped" in r) == [
        ("a/notes.txt", ".txt", None),
        ("b/notes.txt", ".txt", None),
    ]


def test_class_folders_beside_the_split_folders_are_named_in_a_warning(tmp_path, capsys):
    """A class folder next to train/ and test/ was left out of the shards without a word."""
    from pipelines.data.prepare import warn_unread_entries
    from pipelines.data.sources.holdout import HoldOut, HoldOutSettings

    for folder in ("train/a", "train/b", "test/a", "test/b", "green_square", ".cache", "zz"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("a file, not an image")
    (tmp_path / "stray.JPG").write_bytes(b"an image file beside the split folders")
    src = open_source("imagefolder", str(tmp_path))
    assert src.splits == ("train", "test") and src.unread_entries() == ["green_square/", "stray.JPG", "zz/"]
    held = HoldOut(src, HoldOutSettings(fraction=0.1, split="train"))
    warn_unread_entries(held)
    out = capsys.readouterr().out
    assert (
        f"WARNING: 3 folder(s) or image(s) beside the split folders under {tmp_path} are not read: "
        "green_square/, stray.JPG, zz/" in out
    )
    assert open_source("imagefolder", str(tmp_path / "train")).unread_entries() == []  # one split: all read
    replicas.imagenet(tmp_path / "imagenet")  # train/, val/ and the devkit folder the source reads
    assert open_source("imagenet1k", str(tmp_path / "imagenet")).unread_entries() == []


def test_imagefolder_reads_images_in_sub_folders_of_a_class_as_torchvision_does(tmp_path):
    """Nested images were dropped without a word (a two-level tree prepared to 0 images)."""
    files = [
        "cat/a.png",
        "cat/sub/b.png",
        "cat/sub/deeper/c.PNG",
        "cat/.ipynb_checkpoints/hidden.png",  # tool junk in a hidden folder: left out
        "cat/sub/.d.png",
        "dog/x/e.jpg",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "r.png").write_bytes(b"x")
    (tmp_path / "dog" / "linked").symlink_to(tmp_path / "real")  # a linked folder is followed
    src = open_source("imagefolder", str(tmp_path))
    assert src.classes() == ["cat", "dog", "real"]
    got = [(r["key"], r["label"]) for r in read_all(src, "all")]
    assert got == [
        ("cat/a.png", 0),
        ("cat/sub/b.png", 0),
        ("cat/sub/deeper/c.PNG", 0),
        ("dog/linked/r.png", 1),
        ("dog/x/e.jpg", 1),
        ("real/r.png", 2),
    ]


def test_imagefolder_without_class_folders_is_an_error_saying_the_layout(tmp_path):
    """Images straight under the root (or a split) would prepare to an empty dataset, silently."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.jpg").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"no class folders in .*flat.*3 image files directly in it.*<class>/"
    ):
        open_source("imagefolder", str(flat)).classes()
    split = tmp_path / "split"
    (split / "train" / "cat").mkdir(parents=True)
    (split / "train" / "cat" / "1.png").write_bytes(b"x")
    (split / "val").mkdir()
    (split / "val" / "1.png").write_bytes(b"x")
    src = open_source("imagefolder", str(split))
    assert src.classes() == ["cat"]
    with pytest.raises(ValueError, match=r"no class folders in .*val"):
        src.chunks("val")


def test_webvision_lists_labels_and_histogram(tmp_path):
    rep = replicas.webvision(tmp_path)
    src = open_source("webvision", str(tmp_path))
    assert src.classes() == ["n01440764", "n01443537", "n01484850"]
    recs = read_all(src, "train") + read_all(src, "val")
    good = {r["key"]: r["label"] for r in recs if decode_image(r["image"])[1] is None}
    assert good == rep["expected"]
    reasons = {r["key"]: decode_image(r["image"])[1] for r in recs if r["key"] in rep["bad"]}
    assert all(rep["bad"][k] in v for k, v in reasons.items()) and len(reasons) == 2
    assert src.class_histogram() == [5 + 1, 2, 1]  # the missing file is listed too


@pytest.mark.parametrize("per_chunk", [2, 5000])
def test_a_malformed_webvision_list_line_is_one_bad_entry_and_the_next_lines_still_read(tmp_path, per_chunk):
    rep = replicas.webvision(tmp_path)
    lst = tmp_path / "info" / "train_filelist_google.txt"
    lines = lst.read_text().splitlines()
    # line 5 has no label; line 3 holds a form feed, which str.splitlines() would take for a line end
    lines[2] = lines[2].replace(" ", "\x0c ", 1)
    lst.write_text("\n".join([*lines[:4], "google/q0001/no_label.jpg", *lines[4:]]) + "\n")
    src = open_source("webvision", str(tmp_path), lines_per_chunk=per_chunk)
    recs = read_all(src, "train")
    bad = [r for r in recs if r.get("problem")]
    assert [(r["key"], r["problem"]) for r in bad] == [
        (
            "info/train_filelist_google.txt:5",
            "list line 5 is not '<path> <label>': 'google/q0001/no_label.jpg'",
        )
    ]
    good = {r["key"] for r in recs if not r.get("problem") and decode_image(r["image"])[1] is None}
    assert good == {k for k in rep["expected"] if not k.startswith("val")}


def test_webvision_chunks_are_byte_ranges_that_partition_the_lists(tmp_path):
    replicas.webvision(tmp_path)
    whole = [r["key"] for r in read_all(open_source("webvision", str(tmp_path)), "train")]
    small = open_source("webvision", str(tmp_path), lines_per_chunk=2)
    chunks = small.chunks("train")
    assert [c.size for c in chunks] == [2, 2, 2, 2, 1]
    assert [r["key"] for c in chunks for r in small.read(c)] == whole and len(whole) == 9


@pytest.mark.parametrize("gz", [False, True])
def test_imagenet22k_tar_of_tars(tmp_path, gz):
    rep = replicas.imagenet22k(tmp_path, gz=gz)
    src = open_source("imagenet22k", str(rep["path"]))
    assert src.classes() == sorted(rep["sizes"])
    recs = read_all(src, "train")
    assert len(recs) == sum(rep["sizes"].values())
    counts = np.bincount([r["label"] for r in recs]).tolist()
    assert counts == [rep["sizes"][w] for w in sorted(rep["sizes"])]
    bad = {r["key"] for r in recs if decode_image(r["image"])[1] is not None}
    assert bad == set(rep["bad"])


def test_imagenet22k_21k_p_split_rule(tmp_path):
    rep = replicas.imagenet22k(tmp_path)
    src = open_source("imagenet22k", str(rep["path"]), variant="21k_p")
    assert src.classes() == ["n00000004"]  # only the class with > 500 images survives
    val, train = read_all(src, "val"), read_all(src, "train")
    assert len(val) == 50 and len(train) == 550
    assert [r["key"] for r in val][:2] == ["n00000004/n00000004_0000.JPEG", "n00000004/n00000004_0001.JPEG"]
    assert {r["label"] for r in val + train} == {0}


def test_imagenet22k_extracted_folders(tmp_path):
    for wnid, n in (("n2", 2), ("n1", 1)):
        (tmp_path / wnid).mkdir()
        for i in range(n):
            (tmp_path / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"x")
    src = open_source("imagenet22k", str(tmp_path))
    assert [(r["key"], r["label"]) for r in read_all(src, "train")] == [
        ("n1/n1_0.JPEG", 0),
        ("n2/n2_0.JPEG", 1),
        ("n2/n2_1.JPEG", 1),
    ]


def test_imagenet22k_roots_that_are_not_the_dataset_name_the_file_and_the_fix(tmp_path):
    rep = replicas.imagenet22k(tmp_path / "dl")  # dl/winter21_whole.tar
    with pytest.raises(
        ValueError,
        match=r"holds winter21_whole.tar, a tar of per-synset tars: set dataset.root=.*dl/winter21_whole.tar",
    ):
        open_source("imagenet22k", str(tmp_path / "dl")).classes()
    (tmp_path / "dl" / "lost+found").mkdir()  # a volume's root: other entries beside the tar
    (tmp_path / "dl" / "notes").mkdir()
    with pytest.raises(ValueError, match=r"holds winter21_whole.tar, a tar of per-synset tars"):
        open_source("imagenet22k", str(tmp_path / "dl")).classes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "winter21_whole.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match=r"bad/winter21_whole.tar cannot be read as a tar"):
        open_source("imagenet22k", str(tmp_path / "bad")).classes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no <wnid>.tar files or <wnid>/ folders in .*empty"):
        open_source("imagenet22k", str(tmp_path / "empty")).classes()
    whole = rep["path"].read_bytes()
    cut = tmp_path / "cut" / "winter21_whole.tar"
    cut.parent.mkdir()
    cut.write_bytes(whole[: int(len(whole) * 0.6)])  # an interrupted download
    with pytest.raises(
        ValueError, match=r"cut/winter21_whole.tar cannot be read as a tar to its end .*download it again"
    ):
        open_source("imagenet22k", str(cut)).classes()


def synset_tar(wnid: str, n: int, jpeg: bytes) -> tuple[bytes, list]:
    """An ImageNet-22K synset tar of ``n`` copies of ``jpeg`` named ``<wnid>_<i>.JPEG``, and its members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            info = tarfile.TarInfo(f"{wnid}_{i:04d}.JPEG")
            info.size = len(jpeg)
            tf.addfile(info, io.BytesIO(jpeg))
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        return buf.getvalue(), tf.getmembers()


@pytest.mark.parametrize(
    ("where", "kept"),
    [("inside the 6th image", 5), ("inside the 7th header", 6), ("after the end blocks", 10)],
)
def test_a_synset_tar_cut_short_keeps_its_complete_images_and_is_reported(tmp_path, where, kept):
    """A synset tar cut inside an image lost all its images; cut inside a header, the rest silently."""
    from pipelines.data.shard_writer import UNREADABLE, read_chunk

    jpeg = encode(pattern(8, 8), "JPEG")
    whole, members = synset_tar("n00000001", 10, jpeg)
    cut = {
        "inside the 6th image": members[5].offset_data + len(jpeg) // 2,
        "inside the 7th header": members[6].offset + 200,
        "after the end blocks": len(whole),
    }[where]
    (tmp_path / "n00000001.tar").write_bytes(whole[:cut])
    (tmp_path / "n00000002.tar").write_bytes(synset_tar("n00000002", 10, jpeg)[0])
    src = open_source("imagenet22k", str(tmp_path))
    first = src.chunks("train")[0]
    rows = read_chunk(src, first, num_classes=2, max_pixels=10**6)
    assert rows.keys == [f"n00000001/n00000001_{i:04d}.JPEG" for i in range(kept)]
    unreadable = [b for b in rows.log.bad if b["reason"].startswith(UNREADABLE)]
    assert len(unreadable) == (kept < 10), rows.log.bad
    assert len(read_chunk(src, src.chunks("train")[1], 2, 10**6).keys) == 10  # the next synset reads whole


def test_the_21k_p_class_rule_counts_a_cut_synset_tar_without_failing(tmp_path):
    """Counting a cut synset tar's images (21k_p keeps classes of over 500) raised ReadError."""
    jpeg = encode(pattern(4, 4), "JPEG")
    (tmp_path / "n00000001.tar").write_bytes(synset_tar("n00000001", 520, jpeg)[0])
    data, members = synset_tar("n00000002", 520, jpeg)
    (tmp_path / "n00000002.tar").write_bytes(
        data[: members[510].offset_data + 3]
    )  # cut inside its 511th image
    src = open_source("imagenet22k", str(tmp_path), variant="21k_p")
    assert src.classes() == ["n00000001", "n00000002"]  # 520 and 511 listed: both over 500
    assert [src._count(where) for _, where in src.synsets()] == [520, 511]


def test_an_imagenet_root_at_train_or_without_its_devkit_says_what_to_set(tmp_path):
    replicas.imagenet(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"imagenet1k: no train/ folder in .*train; set dataset.root to"
    ):
        open_source("imagenet1k", str(tmp_path / "train"))
    src = open_source("imagenet1k", str(tmp_path), devkit=str(tmp_path / "elsewhere"))
    with pytest.raises(
        FileNotFoundError, match=r"labelled by the ILSVRC2012 devkit, and missing file: .*elsewhere"
    ):
        src.chunks("val")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"data/meta.mat is missing: extract ILSVRC2012_devkit_t12"):
        open_source("imagenet1k", str(tmp_path)).chunks("val")


def test_a_flat_val_devkit_that_does_not_fit_the_images_is_refused_naming_the_file(tmp_path):
    truth = tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"

    def chunks_with(text: str):
        truth.write_text(text)
        return open_source("imagenet1k", str(tmp_path)).chunks("val")

    replicas.imagenet(tmp_path)  # 4 flat val images labelled 3, 1, 2, 1
    assert sum(c.size for c in chunks_with("3\n1\n2\n1\n")) == 4
    with pytest.raises(ValueError, match=r"ground_truth.txt is empty"):
        chunks_with("\n")
    with pytest.raises(
        ValueError, match=r"val holds 4 ILSVRC2012_val_\* images but .*ground_truth.txt labels 3"
    ):
        chunks_with("3\n1\n2\n")
    for bad, line in (("0", 2), ("7", 2), ("x1", 2)):
        with pytest.raises(
            ValueError, match=rf"ground_truth.txt line {line}: '{bad}' is not an ILSVRC2012_ID"
        ):
            chunks_with(f"3\n{bad}\n2\n1\n")
    with pytest.raises(
        ValueError, match=r"1 class\(es\) that have no folder under train/, e.g. \['n00001740'\]"
    ):
        chunks_with("3\n1001\n2\n1\n")  # meta.mat's non-leaf synset: no train folder


def test_imagenet100_classes_come_from_the_packaged_list():
    from pipelines.data.sources.folders import ImageNet100, imagenet100_wnids

    wnids = imagenet100_wnids()
    assert len(wnids) == len(set(wnids)) == 100
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids[:3] == ("n02869837", "n01749939", "n02488291")  # CMC's list, in its own order
    assert ImageNet100.wnids == wnids


def test_image_suffixes_cover_torchvisions_image_extensions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from pipelines.data.sources.folders import IMAGE_SUFFIXES

    assert set(IMG_EXTENSIONS) <= set(IMAGE_SUFFIXES)


def test_jpegs_named_jfif_or_jpe_are_read(tmp_path):
    """Web crawls save JPEGs as .jfif; they were skipped as files without an image extension."""
    (tmp_path / "a").mkdir()
    jpeg = encode(pattern(8, 8), "JPEG")
    for name in ("1.jfif", "2.JPE", "3.jpg"):
        (tmp_path / "a" / name).write_bytes(jpeg)
    records = read_all(open_source("imagefolder", str(tmp_path)), "all")
    assert sorted(r["key"] for r in records if r["image"] == jpeg) == ["a/1.jfif", "a/2.JPE", "a/3.jpg"]
