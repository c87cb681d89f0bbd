"""The artifact store: where videos, pictures, heatmaps and trails live, addressed by key.

Results in the database hold keys (``jobs/42/1/video.mp4``), never filesystem paths, so the
store can move (another directory, a shared volume) without touching the database. A key is
a relative path of plain segments; nothing a key says can reach outside the store's root,
whether by ``..``, an absolute path, or a symlink planted inside the root.

Writes are atomic: bytes go to a hidden temporary file beside the target, are flushed to
disk, and are renamed over the key. A reader sees the old file or the new one, and a crash
mid-write leaves only a ``.partial-*`` file, which :meth:`LocalArtifactStore.sweep_partials`
removes.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_KEY_LENGTH = 512
PARTIAL_PREFIX = ".partial-"
_CHUNK = 1024 * 1024


class ArtifactKeyError(ValueError):
    """A key that is not allowed: empty, absolute, with ``..``, odd characters, or escaping the root."""


class ArtifactNotFound(FileNotFoundError):
    """No artifact under that key."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a well-formed store key, else raise :class:`ArtifactKeyError`.

    A key is 1-512 characters of ``/``-separated segments; each segment starts with a letter
    or digit and holds only letters, digits, ``.``, ``_`` and ``-``. That rules out ``..``,
    hidden names (so temporary files never clash with keys), backslashes and absolute paths.
    """
    if not isinstance(key, str) or not key:
        raise ArtifactKeyError(f"artifact key must be non-empty text, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ArtifactKeyError(f"artifact key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if key.startswith("/") or "\\" in key:
        raise ArtifactKeyError(f"artifact key {key!r} must be a relative path with '/' separators")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise ArtifactKeyError(
                f"artifact key {key!r} has a bad segment {segment!r}; segments are letters, digits, "
                "'.', '_' and '-', starting with a letter or digit"
            )
    return key


def job_key(job_id: int, attempt: int, role: str, suffix: str) -> str:
    """The key of one artifact of one job attempt, e.g. ``jobs/42/1/video.mp4``.

    The attempt is part of the key so that a worker which lost its lease can delete what it
    stored without touching what the worker that took the job over stores.
    """
    suffix = suffix if not suffix or suffix.startswith(".") else f".{suffix}"
    return validate_key(f"{job_prefix(job_id)}/{int(attempt)}/{role}{suffix.lower()}")


def job_prefix(job_id: int) -> str:
    """The key prefix under which every attempt of one job stores its artifacts."""
    return f"jobs/{int(job_id)}"


class ArtifactStore(ABC):
    """Where artifacts live. Keys are validated by :func:`validate_key` in every method."""

    @abstractmethod
    def put_file(self, key: str, source: str | os.PathLike[str]) -> int:
        """Store a copy of the file ``source`` under ``key`` (atomically); returns its size."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> int:
        """Store ``data`` under ``key`` (atomically); returns its size."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open the artifact for reading; raises :class:`ArtifactNotFound`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an artifact is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The artifact's size in bytes; raises :class:`ArtifactNotFound`."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the artifact; False if there was none."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every artifact under ``prefix/``; returns how many."""

    @abstractmethod
    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored key (under ``prefix/`` if given), in sorted order."""

    def read_bytes(self, key: str) -> bytes:
        """The artifact's whole content."""
        with self.open(key) as handle:
            return handle.read()


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under one directory (by default ``<data_dir>/artifacts``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file that holds ``key``, checked to lie inside the root after symlinks resolve."""
        validate_key(key)
        candidate = self.root.joinpath(*key.split("/"))
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise ArtifactKeyError(f"artifact key {key!r} leads outside the store (through a symlink)")
        return resolved

    def _write_atomically(self, key: str, fill: BinaryIO | bytes) -> int:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The directories just made could themselves be symlinks planted by someone else.
        if not target.parent.resolve().is_relative_to(self.root):
            raise ArtifactKeyError(f"artifact key {key!r} leads outside the store (through a symlink)")
        temp = target.parent / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(temp, "xb") as out:
                if isinstance(fill, bytes):
                    out.write(fill)
                else:
                    shutil.copyfileobj(fill, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return size

    def put_file(self, key: str, source: str | os.PathLike[str]) -> int:
        with open(source, "rb") as handle:
            return self._write_atomically(key, handle)

    def put_bytes(self, key: str, data: bytes) -> int:
        return self._write_atomically(key, bytes(data))

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {key!r}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {key!r}") from None

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> int:
        validate_key(prefix)
        removed = 0
        for key in list(self.keys(prefix)):
            removed += self.delete(key)
        directory = self.path(prefix)
        if directory.is_dir():
            # Partial files of a crashed writer under this prefix go too.
            shutil.rmtree(directory, ignore_errors=True)
            self._prune_empty_dirs(directory.parent)
        return removed

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.path(prefix) if prefix else self.root
        if not base.is_dir():
            return iter(())
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            # Never follow symlinked directories out of the store.
            dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
            for name in filenames:
                if name.startswith("."):
                    continue
                relative = (Path(dirpath) / name).relative_to(self.root).as_posix()
                found.append(relative)
        return iter(sorted(found))

    def partial_files(self) -> list[Path]:
        """Temporary files left by writes that never finished (a crashed process)."""
        return sorted(self.root.rglob(f"{PARTIAL_PREFIX}*"))

    def sweep_partials(self, older_than_seconds: float = 3600.0) -> int:
        """Delete partial files older than ``older_than_seconds``; returns how many.

        The age guard keeps a sweep from removing the file another process is writing now.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.partial_files():
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Keep the tree tidy after deletes; stop at the root or at the first non-empty one.
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
