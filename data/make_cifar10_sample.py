"""Rebuild the bundled CIFAR-10 sample from the full JPEG shards (run once by maintainers).

    python data/make_cifar10_sample.py ../shared/datasets/cifar10-jpeg data/cifar10-sample

Keeps the first 10,000 training images (``data_batch_1``, original order) and the first 2,000
test images, byte for byte, in row groups of 500 rows, with ``classes.txt`` and ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pyarrow.parquet as pq

TRAIN, TEST, ROW_GROUP = 10_000, 2_000, 500


def main(src: Path, dst: Path) -> None:
    """Write the sample shards into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", TRAIN), ("test", TEST)):
        table = pq.read_table(sorted(src.glob(f"{split}-*.parquet"))[0]).slice(0, n)
        pq.write_table(
            table, dst / f"{split}-00000-of-00001.parquet", row_group_size=ROW_GROUP, compression="zstd"
        )
    (dst / "classes.txt").write_bytes((src / "classes.txt").read_bytes())
    names = sorted(p.name for p in dst.iterdir() if p.suffix in (".parquet", ".txt"))
    sums = "".join(f"{hashlib.sha256((dst / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    (dst / "SHA256SUMS").write_text(sums)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
