"""Files on a local disk or behind a pyarrow filesystem URI (``s3://``, ``gs://``, ...).

A :class:`Store` is a picklable (filesystem, base path) pair, so Ray tasks can read and write
the same location as the driver. URIs may carry pyarrow's query options, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
        if not is_uri(text):
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

    def walk_files(self, *parts: str) -> list[tuple[str, pafs.FileInfo]]:
        """Every file under a folder, at any depth, as ``(path relative to it, info)`` sorted by path.

        Anything under a hidden folder (a name starting with ``.``, such as ``.ipynb_checkpoints``)
        is left out.
        """
        top = self.path(*parts).rstrip("/")
        selector = pafs.FileSelector(top, recursive=True)
        found = []
        for info in self.fs.get_file_info(selector):
            relative = info.path[len(top) :].lstrip("/")
            if info.type == pafs.FileType.File and not any(
                p.startswith(".") for p in relative.split("/")[:-1]
            ):
                found.append((relative, info))
        return sorted(found, key=lambda item: item[0])

    def write_atomic(self, data: bytes, *parts: str) -> None:
        """Write a file so that readers never see it half-written (temporary name, then move)."""
        final = self.path(*parts)
        if not self.is_local:  # object stores have no folders and publish a PUT all at once
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        write_atomic(final, data)


def join_location(root: str, name: str) -> str:
    """``name`` inside the folder or URI ``root``, keeping a URI's ``?options`` at the end."""
    base, sep, query = str(root).partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in str(path)


NETWORK_FILESYSTEMS = (
    "nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p",
    # FUSE mounts of shared storage (local FUSE ones such as fuseblk or fuse-overlayfs are not)
    "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.ceph-fuse", "fuse.glusterfs",
    "fuse.rclone", "fuse.mountpoint-s3", "fuse.goofys", "fuse.alluxio-fuse",
)  # fmt: skip


def on_network_filesystem(path: str, mounts: str = "/proc/mounts") -> bool:
    """Whether ``path`` lies on a network file system (NFS, CIFS, Ceph, Lustre, s3fs, gcsfuse, ...).

    The mount point is the longest one in ``mounts`` that holds the path.
    """
    target = os.path.realpath(os.path.expanduser(path))
    best, kind = "", ""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind in NETWORK_FILESYSTEMS


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that becomes ``path`` in one rename when the block succeeds.

    Readers never see a half-written file; on an error the temporary file is removed and ``path``
    keeps what it had.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to the local ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
