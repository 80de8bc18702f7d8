"""Builders of test images, including a corrupt-data fixture with every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(arr_or_img, fmt: str = "PNG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pattern(h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    """A random RGB uint8 image whose top row differs from its left column."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (data truncated)."""
    raw = encode(np.zeros((2, 2, 3), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return patched + raw[8 + 4 + 4 + 13 + 4 :]


def corrupt_cases() -> dict[str, tuple[bytes | None, str | None]]:
    """Every bad kind (expected reason fragment) and every odd-but-good kind (``None``)."""
    good = pattern(16, 16)
    jpeg = encode(good, "JPEG", quality=95)
    palette = Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    alpha = Image.fromarray(np.dstack([good, np.full((16, 16), 255, np.uint8)]))
    sixteen = Image.fromarray(good[..., 0].astype(np.uint16) * 257)
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"this is not an image at all\n" * 4, "not an image"),
        "bomb.png": (bomb_png(), "too large"),
        "missing.jpg": (None, "missing file"),
        "cmyk.jpg": (encode(Image.fromarray(good).convert("CMYK"), "JPEG", quality=95), None),
        "grey.png": (encode(Image.fromarray(good[..., 0])), None),
        "palette.png": (encode(palette), None),
        "alpha.png": (encode(alpha), None),
        "sixteen.png": (encode(sixteen), None),
        "plain.png": (encode(good), None),
    }
