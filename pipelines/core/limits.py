"""Limits shared by the config schema and the code that enforces them (no imports: data tasks load it)."""

MAX_PIXELS = 64_000_000  # about 8000 x 8000 pixels; a larger image is treated as a decompression bomb
