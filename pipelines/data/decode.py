"""Guarded image decoding: every image either decodes to RGB uint8 or is named as bad, with why.

Nothing here raises on bad data. ``decode_image`` returns ``(pixels, None)`` for a good image
and ``(None, reason)`` for a bad one; callers drop the row, count it and report the reason with
the file's path. Good images are never dropped: greyscale, palette, CMYK, alpha and 16-bit
images are converted to 8-bit RGB (alpha composited over white, 16-bit scaled by 1/257, float
images read as [0, 1] when no value is above 1, else as 8- or 16-bit levels).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.core.limits import MAX_PIXELS

DEFAULT_MAX_PIXELS = MAX_PIXELS


def decode_image(
    data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> tuple[np.ndarray | None, str | None]:
    """Decode encoded image bytes to an ``[H, W, 3]`` uint8 array.

    Args:
        data: the file's bytes, or ``None`` when the file is listed but missing.
        max_pixels: images with more pixels are refused before their pixels are read.
        draft: for JPEG, let the decoder scale down by a power of two while both sides stay at
            least this ``(width, height)`` (a large speed-up for big photos).

    Returns:
        ``(pixels, None)``, or ``(None, reason)`` with a short human-readable reason.
    """
    if data is None:
        return None, "missing file"
    if len(data) == 0:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                return (
                    None,
                    f"too large: {w}x{h} pixels (dataset.max_pixels={max_pixels}; a decompression bomb?)",
                )
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
            return to_rgb(img), None
    except UnidentifiedImageError:
        return None, "not an image (unknown format)"
    except Image.DecompressionBombError as err:
        return None, f"too large: {err}"
    except OSError as err:
        text = str(err)
        if any(s in text.lower() for s in ("truncated", "broken data stream", "premature end")):
            return None, "truncated image"
        return None, f"undecodable: {text}"
    except Exception as err:  # a bad file must never stop the pipeline
        return None, f"undecodable: {type(err).__name__}: {err}"


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL image to ``[H, W, 3]`` uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:  # a float image in [0, 1] (e.g. a float TIFF)
            top = 1.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy (torch needs one)


UNLABELED = -1  # the label of an image without one (STL-10's unlabeled split): valid for pretraining only
UNLABELED_SPLITS = ("unlabeled", "train+unlabeled")  # the splits whose images may have no label


def check_label(label: object, num_classes: int, allow_unlabeled: bool = False) -> str | None:
    """Return why ``label`` is unusable for ``num_classes`` classes, or ``None`` if it is fine.

    With ``allow_unlabeled``, :data:`UNLABELED` is fine too (pretraining reads such images; the
    kNN bank, the probe and class counts never do).
    """
    try:
        value = int(label)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"label is not an integer: {label!r}"
    if value != label and not isinstance(label, str | bytes):
        return f"label is not an integer: {label!r}"
    if allow_unlabeled and value == UNLABELED:
        return None
    if not 0 <= value < num_classes:
        return f"label out of range: {value} not in [0, {num_classes})"
    return None


class TooManyBadImagesError(RuntimeError):
    """Raised when the share of bad images passes ``dataset.max_bad_fraction``."""


@dataclass
class BadImageLog:
    """Counts good and bad images and keeps the bad ones' paths and reasons.

    Attributes:
        max_bad_fraction: the largest tolerated share of bad images (of all seen).
        min_seen: the share is only enforced once this many images were seen.
        keep: at most this many bad entries are kept in ``bad`` (all are counted).
    """

    max_bad_fraction: float = 0.01
    min_seen: int = 100
    keep: int = 10_000
    good: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    bad_count: int = 0

    def add_good(self, n: int = 1) -> None:
        """Count ``n`` good images."""
        self.good += n

    def add_bad(self, path: str, reason: str) -> None:
        """Record one bad image."""
        self.bad_count += 1
        if len(self.bad) < self.keep:
            self.bad.append({"path": path, "reason": reason})

    def merge(self, other: BadImageLog) -> None:
        """Add another log's counts and entries into this one."""
        self.good += other.good
        self.bad_count += other.bad_count
        self.bad.extend(other.bad[: max(self.keep - len(self.bad), 0)])

    @property
    def seen(self) -> int:
        """Images seen so far."""
        return self.good + self.bad_count

    @property
    def bad_fraction(self) -> float:
        """Share of bad images among those seen (0 when none were seen)."""
        return self.bad_count / self.seen if self.seen else 0.0

    def check(self) -> None:
        """Raise :class:`TooManyBadImagesError` with a report if the bad share is over the limit."""
        if self.seen >= self.min_seen and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadImagesError(self.report(limit=20))

    def report(self, limit: int = 20) -> str:
        """A short readable report: counts, the share, and the first ``limit`` bad files."""
        lines = [
            f"{self.bad_count} bad of {self.seen} images ({100 * self.bad_fraction:.2f}%; "
            f"dataset.max_bad_fraction = {100 * self.max_bad_fraction:.2f}%)"
        ]
        lines += [f"  {b['path']}: {b['reason']}" for b in self.bad[:limit]]
        if self.bad_count > limit:
            lines.append(f"  ... and {self.bad_count - limit} more")
        return "\n".join(lines)
