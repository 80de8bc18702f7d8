"""Imbalance rules against the exact counts of the formats document and the official code."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data import imbalance

CIFAR10 = [5000] * 10
CIFAR100 = [500] * 100


def test_cacr_cifar10_linear_is_500_to_5000():
    counts = imbalance.target_counts("cacr_cifar10_linear", CIFAR10)
    assert counts == [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000]
    assert sum(counts) == 27_500


def test_cacr_cifar100_exp_leaves_30_classes_empty():
    counts = imbalance.target_counts("cacr_cifar100_exp", CIFAR100)
    per_block = [0, 0, 0, 1, 3, 9, 24, 67, 183, 500]
    assert counts == [n for n in per_block for _ in range(10)]
    assert sum(counts) == 7_870
    assert imbalance.summary(counts)["classes_empty"] == 30


def test_commented_out_official_alternatives():
    assert imbalance.target_counts("cacr_cifar10_exp", CIFAR10) == [0, 1, 4, 12, 33, 91, 248, 676, 1839, 5000]
    assert sum(imbalance.target_counts("cacr_cifar100_linear", CIFAR100)) == 27_500


@pytest.mark.parametrize(
    "ratio,expected,c100_total",
    [
        (10, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], 19_573),
        (50, [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 12_608),
        (100, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 10_847),
        (200, [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25], 9_502),
    ],
)
def test_exponential_profile_matches_the_literature_table(ratio, expected, c100_total):
    assert imbalance.target_counts("exponential", CIFAR10, ratio=ratio) == expected
    assert sum(imbalance.target_counts("exponential", CIFAR100, ratio=ratio)) == c100_total


@pytest.mark.parametrize("ratio,total", [(10, 27_500), (50, 25_500), (100, 25_250)])
def test_step_profile_totals(ratio, total):
    assert sum(imbalance.target_counts("step", CIFAR10, ratio=ratio, mu=0.5)) == total
    assert sum(imbalance.target_counts("step", CIFAR100, ratio=ratio, mu=0.5)) == total


def test_counts_never_exceed_what_a_class_has():
    assert imbalance.target_counts("exponential", [10, 3, 50], ratio=2) == [10, 3, 25]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rule="zipf"), "rule must be one of"),
        (dict(rule="exponential"), "ratio must be a number >= 1"),
        (dict(rule="step", ratio=10, mu=1.5), "mu must be in"),
        (dict(rule="cacr_cifar100_exp", class_sizes=[5] * 12), "10 blocks"),
    ],
)
def test_bad_settings_name_the_key(kwargs, match):
    kwargs.setdefault("class_sizes", CIFAR10)
    with pytest.raises(ValueError, match=match):
        imbalance.target_counts(**kwargs)


def _labels_in_class_order():
    """CIFAR-10 labels where position 5000c + r is rank r of class c."""
    return np.repeat(np.arange(10), 5000)


def test_cacr_selection_reproduces_the_official_permutation():
    labels = _labels_in_class_order()
    counts = imbalance.target_counts("cacr_cifar10_linear", CIFAR10)
    kept = imbalance.select(labels, counts, order="cacr", seed=2021)
    assert np.bincount(labels[kept]).tolist() == counts
    # formats doc: every class uses the same permutation, starting 1249, 1470, 2888, 4458, 4309
    first_rank = 1249
    assert first_rank in kept and (5000 * 3 + first_rank) in kept
    rank9 = kept[labels[kept] == 9] - 45000
    assert {1249, 1470, 2888, 4458, 4309} <= set(rank9.tolist())


def test_ldam_selection_reproduces_the_published_fixture():
    labels = _labels_in_class_order()
    counts = imbalance.target_counts("exponential", CIFAR10, ratio=100)
    kept = imbalance.select(labels, counts, order="ldam", seed=0)
    assert np.bincount(labels[kept]).tolist() == counts
    rank9 = set((kept[labels[kept] == 9] - 45000).tolist())
    assert len(rank9) == 50 and {2204, 3816, 2206, 2507, 1926} <= rank9
    # the shuffle order matters, not just the set: class 9's first five come first in a fresh draw
    rng = np.random.RandomState(0)
    for _ in range(9):
        rng.shuffle(np.arange(5000))
    perm = np.arange(5000)
    rng.shuffle(perm)
    assert perm[:5].tolist() == [2204, 3816, 2206, 2507, 1926]


def test_interleaved_labels_select_by_rank_within_class():
    labels = np.tile(np.arange(3), 4)  # 0 1 2 0 1 2 ...
    kept = imbalance.select(labels, [4, 2, 0], order="cacr", seed=1)
    assert np.bincount(labels[kept], minlength=3).tolist() == [4, 2, 0]
    assert (np.diff(kept) > 0).all()


def test_summary_reports_ratio_over_present_classes():
    s = imbalance.summary([0, 0, 10, 100])
    assert s == {
        "per_class": [0, 0, 10, 100],
        "total": 110,
        "classes_present": 2,
        "classes_empty": 2,
        "imbalance_ratio": 10.0,
    }


def test_balanced_resampling_equalises_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = imbalance.balanced_indices(labels, seed=3, num_samples=300)
    assert np.bincount(labels[idx]).tolist() == [100, 100, 100]
    assert set(idx[labels[idx] == 2].tolist()) == {99}
    assert not np.array_equal(idx, imbalance.balanced_indices(labels, seed=4, num_samples=300))


def test_ratio_text_rounds_for_people_and_names_the_empty_case() -> None:
    assert imbalance.ratio_text(imbalance.summary([10, 9])["imbalance_ratio"]) == "1.11"
    assert imbalance.ratio_text(None) == "n/a"


def test_unlabelled_images_pretrain_but_refuse_an_imbalance_rule() -> None:
    from pipelines.core.config_schema import ImbalanceConfig, with_defaults
    from pipelines.data.shard_index import training_rows

    labels = np.array([0, -1, 1, 1, -1, 0, 2])
    positions, counts = training_rows(labels, 3, with_defaults(ImbalanceConfig), seed=0)
    assert positions.tolist() == list(range(7)) and counts == [2, 2, 1]  # counts: labelled images only
    for spec in ({"rule": "exponential", "ratio": 2}, {"rule": "none", "balanced": True}):
        with pytest.raises(ValueError, match=r"2 unlabelled images: set dataset\.train_split"):
            training_rows(labels, 3, with_defaults(ImbalanceConfig, spec), seed=0)


def test_labels_beyond_the_class_list_are_not_counted_and_stay_once_to_be_reported_as_bad_rows() -> None:
    from pipelines.core.config_schema import ImbalanceConfig, with_defaults
    from pipelines.data import order
    from pipelines.data.shard_index import training_rows

    labels = np.array([0, 7, 1, 1, 2, 0, 2, 2, 9, 1])  # 3 classes; rows 1 and 8 are beyond them
    positions, counts = training_rows(labels, 3, with_defaults(ImbalanceConfig), seed=0)
    assert positions.tolist() == list(range(10)) and counts == [2, 3, 3]
    positions, counts = training_rows(labels, 3, with_defaults(ImbalanceConfig, {"balanced": True}), seed=0)
    assert counts == [3, 3, 2] and sorted(labels[positions].tolist()) == [0] * 3 + [1] * 3 + [2] * 2 + [7, 9]
    spec = {"rule": "exponential", "ratio": 3}  # targets 3, 3 * 3**-0.5 -> 1, 3 * 3**-1 -> 1
    positions, counts = training_rows(labels, 3, with_defaults(ImbalanceConfig, spec), seed=0)
    assert len(counts) == 3 and {1, 8} <= set(positions.tolist())
    assert np.bincount(labels[positions][labels[positions] < 3], minlength=3).tolist() == counts
    sample = order.stratified_sample(labels, 10, seed=0, num_classes=3)
    assert sample.tolist() == [0, 2, 3, 4, 5, 6, 7, 9]  # every row in range, none beyond


def test_the_data_monitor_counts_a_retried_report_once_and_remembers_a_bounded_number() -> None:
    from pipelines.data import monitor as mon

    m = mon.DataMonitor(max_bad_fraction=1.0, min_seen=1)
    m.report("batch-a", 10, [])
    m.report("batch-a", 10, [])  # a retried call
    assert m.snapshot()["good"] == 10
    for i in range(mon.MAX_TOKENS + 5):
        m.report(f"t{i}", 1, [])
    assert len(m.seen_tokens) == mon.MAX_TOKENS and "batch-a" not in m.seen_tokens  # the oldest forgotten
    assert m.snapshot()["good"] == 10 + mon.MAX_TOKENS + 5
