"""Which rows a training epoch reads, and in what order (NumPy only: no torch, no Ray).

* **A new order every epoch.** The row groups of the split are put in a new order for every
  epoch, seeded by (seed, epoch), and taken ``mix`` at a time: their rows are put in one random
  order (seeded by seed, epoch and the group) and split between ``mix`` read tasks. The same
  seed and epoch always give the same order, so a run resumed mid-epoch sees the same images in
  the rest of the epoch as an uninterrupted run.
* **Representative samples.** :func:`stratified_sample` draws a seeded class-stratified sample
  (every class present in proportion to its count, at least one image per class where the size
  allows): the kNN bank, the final probe's training features and ``max_train_images`` use it, so
  they never hold only the first classes of a class-sorted split.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, *parts: int | str) -> np.random.Generator:
    """A generator seeded by ``seed`` and stable parts (strings by CRC-32, never Python's ``hash``)."""
    words = [int(seed) & 0xFFFFFFFF]
    words += [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return np.random.default_rng(words)


def slot_group(
    num_items: int, mix: int, seed: int, epoch: int | None, slot: int
) -> tuple[np.ndarray, int, int]:
    """The row groups read by read slot ``slot`` in ``epoch``, and which part of their rows it keeps.

    An epoch has one slot per row group. The row groups are put in the epoch's order and taken
    ``mix`` at a time; the slots of such a group all read its row groups, mix their rows in one
    order (:func:`mix_order`) and keep one part each, so a slot's output is about one row group
    while its rows come from ``mix`` of them.

    Args:
        num_items: row groups in the split.
        mix: row groups mixed together.
        seed: the run's seed.
        epoch: the epoch; ``None`` keeps the items in file order (evaluation streams).
        slot: the slot, in ``[0, num_items)``.

    Returns:
        ``(members, part, parts)``: the item indices, and the slot's part of their mixed rows.
    """
    mix = max(1, int(mix))
    order = np.arange(num_items) if epoch is None else rng_for(seed, "epoch", epoch).permutation(num_items)
    start = slot - slot % mix
    members = order[start : start + mix]
    return members, slot - start, len(members)


def mix_order(rows: int, seed: int, epoch: int, group: int) -> np.ndarray:
    """The order of the ``rows`` rows of mixing group ``group`` (its first slot) in ``epoch``."""
    return rng_for(seed, "rows", epoch, group).permutation(rows)


def part(rows: int, index: int, parts: int) -> slice:
    """Part ``index`` of ``parts`` near-equal contiguous parts of ``rows`` rows."""
    return slice(rows * index // parts, rows * (index + 1) // parts)


def allocate(counts: np.ndarray, size: int) -> np.ndarray:
    """How many of each class a stratified sample of ``size`` takes (largest remainders).

    Proportional to ``counts``; every class with images gets at least one when ``size`` is at
    least the number of such classes (taken from the classes with the largest shares); never more
    than a class has.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    size = min(int(size), total)
    if size >= total:
        return counts.copy()
    exact = counts * size / total
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: size - int(take.sum())]] += 1
    present = counts > 0
    if size >= int(present.sum()):
        for c in np.flatnonzero(present & (take == 0)):
            donor = int(np.argmax(np.where(take > 1, take, -1)))
            take[donor] -= 1
            take[c] = 1
    return np.minimum(take, counts)


def stratified_sample(
    labels: np.ndarray,
    size: int,
    seed: int,
    num_classes: int | None = None,
    group_sizes: list[int] | None = None,
) -> np.ndarray:
    """Sorted positions of a seeded class-stratified sample of ``size`` rows of ``labels``.

    Rows with a negative label (unlabelled) or one beyond ``num_classes`` are never drawn. All
    labelled rows when ``size`` is at least their number. With ``group_sizes`` (the rows of each
    row group, in order), the sample is drawn from the fewest row groups, taken in a seeded order,
    that hold every class's share: a small sample of shuffled shards reads one or two row groups,
    not all of them.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = int(num_classes if num_classes is not None else max(int(labels.max(initial=-1)) + 1, 0))
    labelled = np.flatnonzero((labels >= 0) & (labels < n))
    counts = np.bincount(labels[labelled], minlength=n)
    take = allocate(counts, size)
    if group_sizes is not None and len(group_sizes) > 1:
        bounds = np.r_[0, np.cumsum(group_sizes)]
        held, chosen = np.zeros(n, dtype=np.int64), np.zeros(len(labels), dtype=bool)
        for g in rng_for(seed, "groups").permutation(len(group_sizes)):
            part = labels[bounds[g] : bounds[g + 1]]
            held += np.bincount(part[(part >= 0) & (part < n)], minlength=n)
            chosen[bounds[g] : bounds[g + 1]] = True
            if (held >= take).all():
                break
        labelled = labelled[chosen[labelled]]
        counts = np.bincount(labels[labelled], minlength=n)
    rng = rng_for(seed, "stratified")
    by_class = labelled[np.argsort(labels[labelled], kind="stable")]
    starts = np.r_[0, np.cumsum(counts)]
    picked = [
        rng.choice(by_class[starts[c] : starts[c + 1]], size=int(k), replace=False)
        for c, k in enumerate(take)
        if k
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def training_sample(
    labels: np.ndarray, size: int, seed: int, num_classes: int, group_sizes: list[int] | None = None
) -> np.ndarray:
    """Sorted positions of a seeded sample of ``size`` training rows, unlabelled ones included.

    The labelled rows are sampled by :func:`stratified_sample`; unlabelled rows (negative labels,
    e.g. STL-10's ``unlabeled`` split) keep their share of ``size``, drawn uniformly.
    """
    labels = np.asarray(labels, dtype=np.int64)
    unlabelled = np.flatnonzero(labels < 0)
    size = min(int(size), len(labels))
    n_unlabelled = round(size * len(unlabelled) / len(labels)) if len(labels) else 0
    kept = stratified_sample(labels, size - n_unlabelled, seed, num_classes, group_sizes)
    if n_unlabelled:
        extra = rng_for(seed, "unlabelled").choice(unlabelled, size=n_unlabelled, replace=False)
        kept = np.sort(np.concatenate([kept, extra]))
    return kept


def rows_per_item(positions: np.ndarray, item_sizes: list[int]) -> list[np.ndarray]:
    """Split sorted global row positions (repeats allowed) into positions within each item."""
    bounds = np.r_[0, np.cumsum(item_sizes)]
    positions = np.asarray(positions, dtype=np.int64)
    cut = np.searchsorted(positions, bounds)
    return [positions[cut[i] : cut[i + 1]] - bounds[i] for i in range(len(item_sizes))]


def group_counts(positions: np.ndarray, item_sizes: list[int]) -> list[int]:
    """How many of the sorted ``positions`` fall in each item (row group)."""
    bounds = np.r_[0, np.cumsum(item_sizes)]
    return np.diff(np.searchsorted(np.asarray(positions), bounds)).tolist()
