"""Files on a local disk or behind a pyarrow filesystem URI (``s3://``, ``gs://``, ...).

A :class:`Store` is a picklable (filesystem, base path) pair, so Ray tasks can read and write
the same location as the driver. URIs may carry pyarrow's query options, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Store:
    """A filesystem and a base path inside it."""

    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, location: str | os.PathLike) -> Store:
        """Resolve a local path or a filesystem URI.

        Raises:
            ValueError: if the URI's filesystem cannot be resolved.
        """
        text = os.fspath(location)
        if "://" not in text:
            return cls(pafs.LocalFileSystem(), os.path.abspath(text))
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except Exception as err:
            raise ValueError(f"cannot open {text!r}: {err}") from err
        return cls(fs, path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        """Whether the store is the local file system."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The full path of ``parts`` under the base."""
        return posixpath.join(self.base, *parts) if parts else self.base

    def exists(self, *parts: str) -> bool:
        """Whether the file or folder exists."""
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def is_dir(self, *parts: str) -> bool:
        """Whether the path is a folder."""
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.Directory

    def read(self, *parts: str) -> bytes | None:
        """The file's bytes, or ``None`` if it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(*parts)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            if "not found" in str(err).lower() or "no such file" in str(err).lower():
                return None
            raise

    def read_text(self, *parts: str) -> str:
        """The file's text (UTF-8).

        Raises:
            FileNotFoundError: naming the file when it is missing.
        """
        data = self.read(*parts)
        if data is None:
            raise FileNotFoundError(f"missing file: {self.path(*parts)}")
        return data.decode("utf-8")

    def listdir(self, *parts: str) -> list[pafs.FileInfo]:
        """Entries directly inside a folder, sorted by name."""
        selector = pafs.FileSelector(self.path(*parts), recursive=False)
        return sorted(self.fs.get_file_info(selector), key=lambda info: info.base_name)

    def write_atomic(self, data: bytes, *parts: str) -> None:
        """Write a file so that readers never see it half-written (temporary name, then move)."""
        final = self.path(*parts)
        if not self.is_local:  # object stores have no folders and publish a PUT all at once
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, final)
