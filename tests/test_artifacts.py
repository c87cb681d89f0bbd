"""The local artifact store: keys stay inside the root, writes are atomic, deletes tidy up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.artifacts import (
    ArtifactKeyError,
    ArtifactNotFound,
    LocalArtifactStore,
    job_key,
    validate_key,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_put_read_size_delete(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "video.mp4"
    source.write_bytes(b"\x00\x01" * 1000)
    assert store.put_file("jobs/1/1/video.mp4", source) == 2000
    assert store.put_bytes("jobs/1/1/image.png", b"png") == 3
    assert store.read_bytes("jobs/1/1/video.mp4") == source.read_bytes()
    assert store.size("jobs/1/1/image.png") == 3 and store.exists("jobs/1/1/image.png")
    assert list(store.keys()) == ["jobs/1/1/image.png", "jobs/1/1/video.mp4"]
    assert store.delete("jobs/1/1/video.mp4") and not store.delete("jobs/1/1/video.mp4")
    assert store.delete("jobs/1/1/image.png")
    assert list(store.root.iterdir()) == []  # empty directories pruned
    with pytest.raises(ArtifactNotFound):
        store.open("jobs/1/1/video.mp4")


def test_overwrite_replaces_whole_file(store: LocalArtifactStore) -> None:
    store.put_bytes("a/b.bin", b"long old content")
    store.put_bytes("a/b.bin", b"new")
    assert store.read_bytes("a/b.bin") == b"new"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "jobs/../../x",
        "jobs/./x",
        "jobs//x",
        "a\\b",
        ".hidden",
        "a/.partial-x",
        "a/b c",
        "x" * 513,
    ],
)
def test_bad_keys_are_refused(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactKeyError):
        store.put_bytes(key, b"x")
    assert list(store.root.rglob("*")) == []


def test_symlink_inside_the_root_cannot_lead_out(store: LocalArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "escape")
    with pytest.raises(ArtifactKeyError, match="outside the store"):
        store.put_bytes("escape/file.txt", b"x")
    with pytest.raises(ArtifactKeyError, match="outside the store"):
        store.open("escape/file.txt")
    assert list(outside.iterdir()) == []
    assert list(store.keys()) == []  # listing does not follow it either


def test_a_failed_write_leaves_neither_the_key_nor_a_partial_file(store: LocalArtifactStore) -> None:
    class Exploding:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 2:
                raise OSError("disk went away")
            return b"x" * 1024

    store.put_bytes("jobs/1/1/video.mp4", b"old")
    with pytest.raises(OSError, match="disk went away"):
        store._write_atomically("jobs/1/1/video.mp4", Exploding())  # type: ignore[arg-type]
    assert store.read_bytes("jobs/1/1/video.mp4") == b"old"  # the old version is intact
    assert store.partial_files() == []


def test_sweep_removes_partials_of_dead_writers_only_when_old(store: LocalArtifactStore) -> None:
    (store.root / "jobs").mkdir()
    stale = store.root / "jobs" / ".partial-deadbeef"
    stale.write_bytes(b"half a video")
    os.utime(stale, (1, 1))
    fresh = store.root / "jobs" / ".partial-cafe"
    fresh.write_bytes(b"being written now")
    assert store.sweep_partials(older_than_seconds=60) == 1
    assert store.partial_files() == [fresh]
    assert list(store.keys()) == []  # partial files are never listed as artifacts


def test_delete_prefix_removes_one_job_only(store: LocalArtifactStore) -> None:
    for key in ("jobs/1/1/video.mp4", "jobs/1/2/video.mp4", "jobs/12/1/video.mp4"):
        store.put_bytes(key, b"v")
    assert store.delete_prefix("jobs/1") == 2
    assert list(store.keys()) == ["jobs/12/1/video.mp4"]


def test_job_keys() -> None:
    assert job_key(42, 3, "video", ".MP4") == "jobs/42/3/video.mp4"
    assert job_key(42, 1, "trail", "safetensors") == "jobs/42/1/trail.safetensors"
    assert validate_key("jobs/42/3/video.mp4") == "jobs/42/3/video.mp4"
