"""Each shard's bytes confirmed against what its manifest records — its size and sha256 — in background threads.

The loaders trust nothing they cached about a shard (where its samples lie, which decode, their sizes and
labels) until this run has seen that the tar still holds the bytes the manifest describes: storage rot that
keeps the file's size and modification time is invisible to a cache stamped by both. :class:`Confirmation`
starts hashing when it is made (one thread per core; ``hashlib`` releases the GIL, so the hashing overlaps
whatever the caller does next) and :meth:`Confirmation.result` waits for it. A tar listed more than once (a
stand-in set of symbolic links) is hashed once. What it costs is measured in ``bench/README.md``
("Confirming shards at open").
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path

from shards.base.host import cores

CHUNK = 1 << 22


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 4 MiB pieces (memory stays flat for any size)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return h.hexdigest()
            h.update(view[:n])


class Confirmation:
    """Whether each shard of ``manifest`` (in ``directory``) holds the bytes the manifest records.

    ``result()`` is a list, one entry per shard: None when the tar's size and sha256 match, else a few words
    saying how it differs. ``threads`` defaults to the cores this process may run on.
    """

    def __init__(self, directory: str | os.PathLike, manifest, *, threads: int | None = None):
        self.directory = Path(directory)
        self._answers: dict[tuple, str | None] = {}
        self._keys: list[tuple] = []
        todo: list[tuple] = []
        for info in manifest.shards:
            path = self.directory / info.file
            try:
                real, size = os.path.realpath(path), os.stat(path).st_size
            except OSError as e:
                real, size = str(path), None
                why = f"cannot be read ({e.strerror})"
            key = (real, info.sha256, info.bytes)
            self._keys.append(key)
            if key in self._answers or key in todo:
                continue
            if size is None:
                self._answers[key] = why
            elif size != info.bytes:
                self._answers[key] = f"holds {size} bytes, the manifest records {info.bytes}"
            else:
                todo.append(key)
        self._queue: queue.Queue = queue.Queue()
        for key in todo:
            self._queue.put(key)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._left = len(todo)
        if not todo:
            self._done.set()
        for _ in range(min(threads or cores(), len(todo))):
            threading.Thread(target=self._work, name="shard-sha256", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                key = self._queue.get_nowait()
            except queue.Empty:
                return
            real, sha, _ = key
            try:
                answer = None if file_sha256(real) == sha else "its sha256 differs from the manifest's"
            except OSError as e:
                answer = f"cannot be read ({e.strerror})"
            with self._lock:
                self._answers[key] = answer
                self._left -= 1
                if self._left == 0:
                    self._done.set()

    def result(self) -> list[str | None]:
        self._done.wait()
        return [self._answers[k] for k in self._keys]
