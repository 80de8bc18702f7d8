"""Guarded decoding: bad files named with the right reason, odd-but-good files kept and correct."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.data.decode import BadImageLog, TooManyBadImagesError, check_label, decode_image
from tests.helpers.data_fixtures import corrupt_cases, encode, pattern

CASES = corrupt_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_case_is_good_or_bad_for_the_right_reason(name):
    data, reason = CASES[name]
    pixels, why = decode_image(data)
    if reason is None:
        assert why is None, why
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    else:
        assert pixels is None and reason in why


def test_a_too_large_image_names_the_key_that_sets_the_limit():
    pixels, why = decode_image(encode(pattern(20, 30)), max_pixels=599)
    assert pixels is None and why == "too large: 30x20 pixels (dataset.max_pixels=599; a decompression bomb?)"


def test_png_pixels_are_exact():
    arr = pattern(7, 9)
    pixels, _ = decode_image(encode(arr))
    np.testing.assert_array_equal(pixels, arr)


def test_greyscale_and_sixteen_bit_are_expanded_to_rgb_exactly():
    arr = pattern(5, 6)[..., 0]
    grey, _ = decode_image(encode(Image.fromarray(arr)))
    np.testing.assert_array_equal(grey, np.repeat(arr[..., None], 3, -1))
    sixteen, _ = decode_image(encode(Image.fromarray(arr.astype(np.uint16) * 257)))
    np.testing.assert_array_equal(sixteen, np.repeat(arr[..., None], 3, -1))


def test_float_images_in_zero_one_are_read_as_fractions_of_white():
    """A float TIFF in [0, 1] was read as 8-bit levels 0 and 1: black."""
    arr = pattern(5, 6)[..., 0]
    fractions = Image.fromarray((arr / 255.0).astype(np.float32), mode="F")
    pixels, why = decode_image(encode(fractions, "TIFF"))
    assert why is None
    np.testing.assert_array_equal(pixels, np.repeat(arr[..., None], 3, -1))
    levels = Image.fromarray(arr.astype(np.float32), mode="F")  # 0..255 floats stay levels
    np.testing.assert_array_equal(decode_image(encode(levels, "TIFF"))[0], np.repeat(arr[..., None], 3, -1))


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[1, 1] = (0, 0, 255, 0)  # fully transparent blue
    pixels, _ = decode_image(encode(Image.fromarray(rgba)))
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[1, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_converts_to_close_rgb():
    arr = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    cmyk = encode(Image.fromarray(arr).convert("CMYK"), "JPEG", quality=100)
    pixels, _ = decode_image(cmyk)
    assert np.abs(pixels.astype(int) - arr).max() <= 3


def test_draft_decodes_large_jpeg_smaller_but_not_below_the_request():
    big = encode(np.zeros((400, 600, 3), np.uint8), "JPEG")
    pixels, _ = decode_image(big, draft=(100, 100))
    assert pixels.shape == (100, 150, 3)
    assert decode_image(big)[0].shape == (400, 600, 3)


@pytest.mark.parametrize(
    "label,num,ok",
    [
        (3, 10, True),
        (0, 1, True),
        (10, 10, False),
        (-1, 10, False),
        ("x", 10, False),
        (2.5, 10, False),
    ],
)
def test_check_label(label, num, ok):
    assert (check_label(label, num) is None) == ok


@pytest.mark.parametrize("label,ok", [(-1, True), (-2, False), (10, False), (9, True)])
def test_check_label_lets_unlabelled_images_through_only_when_asked(label, ok):
    assert (check_label(label, 10, allow_unlabeled=True) is None) == ok


def test_bad_image_log_enforces_the_fraction_with_a_readable_report():
    log = BadImageLog(max_bad_fraction=0.1, min_seen=10)
    log.add_good(9)
    log.add_bad("a/b.jpg", "truncated image")
    log.check()  # 10% is not over 10%
    log.add_bad("a/c.jpg", "empty file (0 bytes)")
    with pytest.raises(TooManyBadImagesError) as info:
        log.check()
    text = str(info.value)
    assert "2 bad of 11 images" in text and "a/c.jpg: empty file" in text


def test_bad_image_log_merge_adds_counts():
    a, b = BadImageLog(), BadImageLog()
    a.add_good(3)
    b.add_bad("x", "y")
    a.merge(b)
    assert (a.good, a.bad_count, a.bad) == (3, 1, [{"path": "x", "reason": "y"}])


def test_the_data_monitor_counts_a_retried_report_once() -> None:
    from pipelines.data.monitor import DataMonitor

    mon = DataMonitor(max_bad_fraction=0.5)
    mon.set_epoch(3)
    bad = [{"path": "a.jpg", "reason": "truncated"}]
    assert mon.report("t1", 10, bad) == 3
    assert mon.report("t1", 10, bad) == 3  # the same call retried after a timeout
    assert mon.report("t2", 5, []) == 3
    snap = mon.snapshot()
    assert (snap["good"], snap["bad"], [b["path"] for b in snap["bad_files"]]) == (15, 1, ["a.jpg"])
