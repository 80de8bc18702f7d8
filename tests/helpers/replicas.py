"""Miniature, byte-exact replicas of every on-disk layout in docs/data-formats.md."""

from __future__ import annotations

import csv
import io
import pathlib
import pickle
import tarfile

import numpy as np
from PIL import Image

from tests.helpers.data_fixtures import encode, pattern

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "datasets"
EXACT = SHARED / "cifar-exact-samples"


def exact_samples(which: str = "cifar10") -> tuple[np.ndarray, list[int], list[str]]:
    """The 20 lossless CIFAR test images (pixels ``[20, 32, 32, 3]``, labels, class names)."""
    folder = EXACT / which
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    images = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows])
    names_file = "classes.txt" if which == "cifar10" else "fine_classes.txt"
    names = (folder / names_file).read_text().split()
    return images, [int(r["label"]) for r in rows], names


def hwc_to_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_pickle(path: pathlib.Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar10(root: pathlib.Path) -> dict:
    """``cifar-10-batches-py``: test_batch = the 20 exact images; 5 small train batches."""
    images, labels, names = exact_samples("cifar10")
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    write_pickle(d / "batches.meta", {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072})
    write_pickle(
        d / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": hwc_to_rows(images),
            "filenames": [f"img_{i:02d}.png" for i in range(20)],
        },
    )
    train = {}
    rng = np.random.default_rng(0)
    for b in range(1, 6):
        n = 3 + b  # unequal batch sizes and class counts
        lab = rng.integers(0, 10, n).tolist()
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        write_pickle(
            d / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": lab,
                "data": hwc_to_rows(imgs),
                "filenames": [f"t{b}_{i}.png" for i in range(n)],
            },
        )
        train[b] = (imgs, lab)
    return {"test": (images, labels), "train": train, "classes": names}


def cifar100(root: pathlib.Path, train_per_class: int | None = None) -> dict:
    """``cifar-100-python``: test = the 20 exact images; train = the same, or ``train_per_class``
    random images of every class (enough for the imbalance rules to keep some)."""
    images, labels, names = exact_samples("cifar100")
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    write_pickle(d / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    rows = {
        "filenames": [f"x{i}.png" for i in range(20)],
        "batch_label": "testing batch 1 of 1",
        "fine_labels": labels,
        "coarse_labels": [lab // 5 for lab in labels],
        "data": hwc_to_rows(images),
    }
    write_pickle(d / "test", rows)
    train = {**rows, "batch_label": "training batch 1 of 1"}
    if train_per_class:
        fine = [c for c in range(100) for _ in range(train_per_class)]
        pixels = np.random.default_rng(0).integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
        train = {
            **train,
            "fine_labels": fine,
            "coarse_labels": [c // 5 for c in fine],
            "data": hwc_to_rows(pixels),
            "filenames": [f"t{i}.png" for i in range(len(fine))],
        }
    write_pickle(d / "train", train)
    return {"test": (images, labels), "classes": names}


def stl10(root: pathlib.Path) -> dict:
    """``stl10_binary``: column-major planar records; image 0's top row differs from its left column."""
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", 7), ("test", 4), ("unlabeled", 6)):
        imgs = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        imgs[0, 0, :, 0] = np.arange(96)  # top row, red channel: 0..95
        imgs[0, :, 0, 0] = 200  # left column, red channel
        imgs[0, 0, 0, 0] = 0
        (d / f"{split}_X.bin").write_bytes(imgs.transpose(0, 3, 2, 1).tobytes())  # HWC -> C, W, H
        labels = rng.integers(1, 11, n).astype(np.uint8)
        if split != "unlabeled":
            (d / f"{split}_y.bin").write_bytes(labels.tobytes())
        out[split] = (imgs, (labels.astype(int) - 1).tolist() if split != "unlabeled" else [-1] * n)
    (d / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])
        + "\n"
    )
    (d / "fold_indices.txt").write_text("\n".join(" ".join(str(i) for i in range(f, 7, 3)) for f in range(3)))
    return out


WNIDS = ["n01440764", "n01443537", "n02869837"]  # n02869837 is in ImageNet-100


def imagenet(root: pathlib.Path, val_layout: str = "flat") -> dict:
    """ILSVRC2012 layout: train/<wnid>/ (a PNG named .JPEG, a CMYK, a greyscale), val flat + devkit."""
    expected = {}
    for c, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(2 + c):
            arr = pattern(20, 24, seed=10 * c + i)
            if i == 0 and c == 0:
                data = encode(arr, "PNG")  # PNG content with a .JPEG name
            elif i == 1 and c == 1:
                data = encode(Image.fromarray(arr).convert("CMYK"), "JPEG")
            elif i == 0 and c == 2:
                data = encode(Image.fromarray(arr[..., 0]), "JPEG")
            else:
                data = encode(arr, "JPEG")
            (folder / f"{wnid}_{i}.JPEG").write_bytes(data)
            expected[f"train/{wnid}/{wnid}_{i}.JPEG"] = c
    # devkit IDs deliberately not in sorted-WNID order: ID 1 -> n02869837, 2 -> n01440764, 3 -> n01443537
    ids = {WNIDS[2]: 1, WNIDS[0]: 2, WNIDS[1]: 3}
    val_truth = [WNIDS[1], WNIDS[2], WNIDS[0], WNIDS[2]]
    if val_layout == "flat":
        (root / "val").mkdir()
        for n, wnid in enumerate(val_truth):
            (root / "val" / f"ILSVRC2012_val_{n + 1:08d}.JPEG").write_bytes(encode(pattern(8, 8, n), "JPEG"))
            expected[f"val/ILSVRC2012_val_{n + 1:08d}.JPEG"] = WNIDS.index(wnid)
        devkit(root, ids, val_truth)
    return expected


def devkit(root: pathlib.Path, ids: dict[str, int], val_truth: list[str]) -> None:
    """``ILSVRC2012_devkit_t12``: ``meta.mat`` (the IDs of ``ids`` and a non-leaf synset) and the
    validation ground truth (one ID per flat val image, in file-name order)."""
    from scipy.io import savemat

    dk = root / "ILSVRC2012_devkit_t12" / "data"
    dk.mkdir(parents=True)
    (dk / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val_truth))
    synsets = np.zeros(len(ids) + 1, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for w, i in ids.items():
        synsets[i - 1] = (i, w, "x")
    synsets[len(ids)] = (1001, "n00001740", "entity")  # a non-leaf synset, never a label
    savemat(dk / "meta.mat", {"synsets": synsets})


def imagenet100(root: pathlib.Path) -> dict:
    """ILSVRC2012 layout holding CMC's 100 ImageNet-100 classes and one class outside them: train/<wnid>/
    (1 or 2 tiny JPEGs each), a flat val/ (one image per class) labelled by the devkit."""
    from pipelines.data.sources.folders import imagenet100_wnids

    subset = imagenet100_wnids()

    wnids = [*sorted(subset), "n01440764"]  # the last is not an ImageNet-100 class
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(1 + c % 2):
            (folder / f"{wnid}_{i}.JPEG").write_bytes(encode(pattern(12, 16, seed=c * 2 + i), "JPEG"))
    (root / "val").mkdir()
    ids = {w: i + 1 for i, w in enumerate(reversed(wnids))}  # devkit IDs not in sorted-WNID order
    for n in range(len(wnids)):
        image = encode(pattern(12, 16, 500 + n), "JPEG")
        (root / "val" / f"ILSVRC2012_val_{n + 1:08d}.JPEG").write_bytes(image)
    devkit(root, ids, wnids)
    return {"classes": sorted(subset), "train": {w: 1 + c % 2 for c, w in enumerate(wnids[:-1])}}


def webvision(root: pathlib.Path) -> dict:
    """WebVision lists, skewed per-class counts, a truncated JPEG and a PNG named .jpg."""
    info = root / "info"
    info.mkdir(parents=True)
    (info / "synsets.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 great white shark\n"
    )
    (info / "queries_synsets_map.txt").write_text("1 1\n2 2\n3 2\n4 3\n")  # class 2 has two queries
    google, flickr, expected, bad = [], [], {}, {}
    counts = {0: 5, 1: 2, 2: 1}
    n = 0
    for label, k in counts.items():
        for _ in range(k):
            q = f"q{label + 1:04d}"
            group, lst = ("flickr", flickr) if label == 2 else ("google", google)
            path = f"{group}/{q}/img{n:03d}.jpg"
            data = encode(pattern(10, 12, n), "JPEG")
            if n == 1:
                data = data[: len(data) // 2]
                bad[path] = "truncated"
            elif n == 2:
                data = encode(pattern(10, 12, n), "PNG")
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
            lst.append(f"{path} {label}")
            if path not in bad:
                expected[path] = label
            n += 1
    google.append("google/q0001/missing.jpg 0")
    bad["google/q0001/missing.jpg"] = "missing file"
    (info / "train_filelist_google.txt").write_text("\n".join(google) + "\n")
    (info / "train_filelist_flickr.txt").write_text("\n".join(flickr) + "\n")
    (root / "val_images_256").mkdir()
    val = []
    for i in range(3):
        (root / "val_images_256" / f"val{i + 1:06d}.jpg").write_bytes(encode(pattern(9, 9, 50 + i), "JPEG"))
        val.append(f"val{i + 1:06d}.jpg {i}")
        expected[f"val_images_256/val{i + 1:06d}.jpg"] = i
    (info / "val_filelist.txt").write_text("\n".join(val) + "\n")
    return {"expected": expected, "bad": bad, "train_counts": [5, 2, 1]}


def imagenet22k(root: pathlib.Path, gz: bool = False) -> dict:
    """An outer tar of inner synset tars with 1, 3, 20 and 600 tiny images (one corrupt, one grey)."""
    sizes = {"n00000001": 1, "n00000002": 3, "n00000003": 20, "n00000004": 600}
    tiny = encode(pattern(4, 4, 0), "JPEG")
    outer_path = root / ("winter21_whole.tar.gz" if gz else "winter21_whole.tar")
    root.mkdir(parents=True, exist_ok=True)
    bad = {}
    with tarfile.open(outer_path, "w:gz" if gz else "w") as outer:
        for wnid, n in sizes.items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(n):
                    data = tiny
                    if wnid == "n00000003" and i == 5:
                        data = b"corrupt"
                        bad[f"{wnid}/{wnid}_{i:04d}.JPEG"] = "not an image"
                    elif wnid == "n00000002" and i == 0:
                        data = encode(pattern(4, 4, 1)[..., 0], "JPEG")
                    info = tarfile.TarInfo(f"{wnid}_{i:04d}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    return {"path": outer_path, "sizes": sizes, "bad": bad}
