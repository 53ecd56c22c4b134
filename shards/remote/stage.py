"""The node-local staging cache: a remote shard set downloaded once per node, checked, then read as a local set.

``stage(URL, options)`` returns a local folder holding the set at URL, which every reader then opens as any
local set (``shards.read.reader`` confirms each shard's sha256 against the manifest at every open, as it does
for a folder the user packed). How it gets there:

* **The key.** The manifest is read remotely; the set's folder in the cache is ``CACHE/sets/NAME-KEY`` where
  KEY digests the URL and the manifest's sha256s, so a set re-uploaded with other bytes is a new folder and
  two URLs never share one. A later run that finds the folder complete (manifest there, every shard its size)
  uses it at once: the reader's confirmation is the check.
* **One stager per node.** ``CACHE/sets/NAME-KEY.lock`` is held with ``flock`` while staging; another process
  (the other ranks of the node, another job) says in one line that it waits, then finds the set staged. The
  kernel drops the lock of a killed stager.
* **Free space** is checked first: one line with what the set needs and what the cache's disk has.
* **Downloads.** Shards in parallel threads, each in ranged reads of ``CHUNK`` bytes appended to a hidden
  ``.FILE.partial`` and hashed as they land; a shard whose sha256 matches the manifest's is installed by
  rename (a kill never leaves a half shard under a shard's name). An interrupted download resumes: the partial
  file is hashed and the download continues from its end (a server that ignores ranges sends the whole file
  again). A shard that fails its sha256 is fetched once more from the start, then it is one line naming it.
  The manifest is written last: a folder without it is not a staged set.
* **A shard damaged on the server** (its sha256 differs from the manifest's after two downloads): with
  ``on_corrupt="error"`` one line naming it and nothing installed; with ``on_corrupt="skip"`` the damaged
  shard is installed under its name, recorded in ``staged.json``, and said in one line; the reader's
  confirmation then finds it differs and checks its samples one by one against the sha256 each sample's
  ``.json`` records (manifest version 2), so exactly its damaged samples are skipped and counted, as for a
  local set. Each later stage of that set downloads the damaged shards again (the server may be fixed).
* **Progress**: a bar on a terminal (MB, MB/s, ETA), a plain line per tenth elsewhere (``shards.base.progress``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shards.base.atomic import atomic_write_bytes, atomic_write_text
from shards.base.errors import ShardError
from shards.base.progress import progress
from shards.format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from shards.remote.fs import filesystem, read_manifest, remote_errors
from shards.remote.options import CACHE_ENV, RemoteOptions
from shards.remote.url import child, is_url, normalise, redact, scheme_of

CHUNK = 8 << 20  # bytes per ranged read
THREADS = 8  # shards downloaded at once
STAGED_NAME = "staged.json"  # the set's URL, when it was staged, shards installed damaged (on_corrupt="skip")
PARTIAL = ".{}.partial"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_key(url: str, manifest: Manifest) -> str:
    """The cache key of the set at ``url`` as its manifest describes it."""
    h = hashlib.sha256(normalise(url).encode())
    for info in manifest.shards:
        h.update(f"\n{info.file} {info.bytes} {info.sha256}".encode())
    return h.hexdigest()[:16]


def staged_folder(url: str, manifest: Manifest, cache: Path) -> Path:
    return Path(cache) / "sets" / f"{manifest.name}-{set_key(url, manifest)}"


def stage(
    url: str,
    options: RemoteOptions | None = None,
    *,
    option: str = "--shards",
    threads: int = THREADS,
    log=_say,
    stats: dict | None = None,
) -> Path:
    """The local folder holding the shard set at ``url``, staged now unless the cache holds it (module
    docstring). ``stats``, when given, receives ``bytes`` (downloaded by this call), ``seconds`` and
    ``cached`` (True when nothing was downloaded)."""
    options = options or RemoteOptions()
    url = normalise(url)
    scheme_of(url, option)
    t0 = time.perf_counter()
    fs = filesystem(url, options.storage_options, option)
    manifest, raw = read_manifest(url, options.storage_options, option, fs=fs)
    folder = staged_folder(url, manifest, options.cache)
    stats = stats if stats is not None else {}
    stats.update(bytes=0, seconds=0.0, cached=True, folder=str(folder))
    if _complete(folder, manifest, raw):
        return folder  # a finished set needs no lock (a read-only cache staged beforehand works too)
    _writable(folder.parent, options)
    with NodeLock(folder.parent / f"{folder.name}.lock", url, folder, options, log):
        damaged = _damaged(folder)
        if _complete(folder, manifest, raw):
            return folder  # staged by the process we waited for
        folder.mkdir(exist_ok=True)
        todo = [s for s in manifest.shards if s.file in damaged or not _installed(folder, s)]
        _check_space(folder, todo, url, options)
        if todo:
            stats["cached"] = False
            log(
                f"staging {redact(url)}: {len(todo)} of {len(manifest.shards)} shard(s), "
                f"{_mb(sum(s.bytes for s in todo))} into {folder}"
            )
        for s in manifest.shards:  # indexes first: small, and a set is unusable without them
            if not (folder / s.index).is_file():
                with remote_errors(child(url, s.index)):
                    atomic_write_bytes(folder / s.index, fs.cat_file(child(url, s.index)))
        bad = _download(fs, url, folder, todo, damaged, threads, options, log, stats)
        for file in bad:  # the second download of each is at its partial name
            part = folder / PARTIAL.format(file)
            if options.on_corrupt == "skip":
                os.replace(part, folder / file)
            else:
                part.unlink(missing_ok=True)
                (folder / file).unlink(missing_ok=True)
        if bad and options.on_corrupt != "skip":
            first = bad[0]
            more = f" ({len(bad) - 1} more shard(s) too)" if len(bad) > 1 else ""
            raise ShardError(
                f"{redact(child(url, first))}: its sha256 differs from the manifest's after two downloads, so it was "
                f"damaged on the server{more}; re-upload the set (`python -m shards pack SRC --out {redact(url)} "
                "--overwrite`), or pass --on-corrupt skip to train on its undamaged samples"
            )
        for file in bad:
            log(
                f"{redact(child(url, file))}: its sha256 differs from the manifest's after two downloads (damaged on "
                "the server); staged as it is: with --on-corrupt skip its samples are checked one by one and the "
                "damaged ones skipped"
            )
        record = {"url": redact(url), "staged": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "damaged": sorted(bad)}
        atomic_write_text(folder / STAGED_NAME, json.dumps(record, indent=1) + "\n")
        if _read(folder / MANIFEST_NAME) != raw:
            atomic_write_bytes(folder / MANIFEST_NAME, raw)  # last: the folder is a set from now on
        stats["seconds"] = time.perf_counter() - t0
        if not stats["cached"]:
            secs = max(stats["seconds"], 1e-9)
            log(
                f"staged {redact(url)}: {_mb(stats['bytes'])} in {secs:.1f} s "
                f"({stats['bytes'] / 2**20 / secs:,.1f} MB/s) into {folder}"
            )
        return folder


# -- what is there -----------------------------------------------------------------------------------


def _installed(folder: Path, s: ShardInfo) -> bool:
    """Shard ``s`` is in place (installed by rename only after its sha256 matched; the reader confirms it)."""
    try:
        return (folder / s.file).stat().st_size == s.bytes
    except OSError:
        return False


def _damaged(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / STAGED_NAME).read_text()).get("damaged", ()))
    except (OSError, ValueError, AttributeError):
        return set()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _complete(folder: Path, manifest: Manifest, raw: bytes) -> bool:
    """The staged folder holds the whole set under this manifest, and no shard that was damaged on the server
    (those are downloaded again by the stager, under the lock: the server may have been fixed)."""
    if _read(folder / MANIFEST_NAME) != raw or _damaged(folder):
        return False
    return all(_installed(folder, s) and (folder / s.index).is_file() for s in manifest.shards)


def _writable(sets: Path, options: RemoteOptions) -> None:
    try:
        sets.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShardError(_cache_error(options, e)) from None


def _cache_error(options: RemoteOptions, e: OSError) -> str:
    why = e.strerror or str(e)
    return (
        f"--cache-dir {options.cache}: cannot write there ({why}); give a writable --cache-dir (or set "
        f"{CACHE_ENV}) on a node-local disk with room for the sets"
    )


def _check_space(folder: Path, todo: list[ShardInfo], url: str, options: RemoteOptions) -> None:
    need = 0
    for s in todo:
        part = folder / PARTIAL.format(s.file)
        have = part.stat().st_size if part.exists() else 0
        need += max(s.bytes - have, 0)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ShardError(
            f"--cache-dir {options.cache}: staging {redact(url)} needs {_mb(need)} more, {_mb(free)} are free there; "
            "free space or give a --cache-dir on a larger node-local disk"
        )


# -- downloading -------------------------------------------------------------------------------------


def _download(fs, url, folder, todo, damaged, threads, options, log, stats) -> list[str]:
    """Download ``todo`` in parallel; the files whose sha256 did not match twice (in manifest order)."""
    if not todo:
        return []
    total = sum(s.bytes for s in todo)
    lock = threading.Lock()
    stop = threading.Event()
    with progress(total, f"stage {redact(url)}", "B", enabled=options.progress) as bar:

        def moved(n: int) -> None:
            with lock:
                bar.update(n)
                stats["bytes"] = stats.get("bytes", 0) + n

        def one(s: ShardInfo) -> str | None:
            return _fetch(fs, url, folder, s, s.file in damaged, moved, stop, log)

        pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo))), thread_name_prefix="stage")
        try:
            results = list(pool.map(one, todo))
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [s.file for s, bad in zip(todo, results) if bad]


def _fetch(fs, url, folder: Path, s: ShardInfo, fresh: bool, moved, stop, log) -> str | None:
    """Download shard ``s`` into ``folder`` (resuming its partial file unless ``fresh``); None when it landed
    with the manifest's sha256 and was installed by rename, else why not."""
    src, part, dest = child(url, s.file), folder / PARTIAL.format(s.file), folder / s.file
    for attempt in (1, 2):
        if attempt == 2 or fresh:
            part.unlink(missing_ok=True)
        h, have = hashlib.sha256(), 0
        if part.exists():
            have = part.stat().st_size
            if have > s.bytes:
                part.unlink()
                have = 0
            else:
                _hash_into(h, part)
                moved(have)
        with open(part, "ab") as f:
            while have < s.bytes:
                if stop.is_set():
                    raise KeyboardInterrupt
                end = min(have + CHUNK, s.bytes)
                with remote_errors(src):
                    data = fs.cat_file(src, start=have, end=end)
                want = end - have
                if len(data) > want:  # the server ignored the range and sent the whole file
                    f.truncate(0)
                    f.seek(0)
                    h, have, want = hashlib.sha256(), 0, s.bytes
                    data = data[: s.bytes + 1]
                f.write(data)
                h.update(data)
                moved(len(data))
                have += len(data)
                if len(data) < want:
                    break  # the server's file is shorter than the manifest says
            f.flush()
            os.fsync(f.fileno())
        if have == s.bytes and h.hexdigest() == s.sha256.lower():
            os.replace(part, dest)
            return None
        if attempt == 1:
            log(f"{redact(src)}: its sha256 differs from the manifest's; fetching it once more")
    return "sha256 differs"  # the second download stays at the partial name: the caller decides


def _hash_into(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# -- one stager per node -------------------------------------------------------------------------------


class NodeLock:
    """``flock`` on ``path`` for as long as the stager works; a second process says once that it waits."""

    def __init__(self, path: Path, url: str, folder: Path, options: RemoteOptions, log):
        self.path, self.url, self.folder, self.options, self.log = path, url, folder, options, log
        self.fd: int | None = None

    def __enter__(self) -> NodeLock:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ShardError(_cache_error(self.options, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            self.log(
                f"{redact(self.url)}: another process (pid {holder.get('pid', '?')}) is staging it into "
                f"{self.folder}; waiting for it (one stager per node)"
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "url": redact(self.url)}).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # drops the flock


def local_set(location, options: RemoteOptions | None = None, option: str = "--shards") -> Path:
    """The local folder of the shard set at ``location``: itself for a folder, the staged copy for a URL
    (staged now if the cache does not hold it; see ``shards.remote.stage``)."""
    if is_url(str(location)):
        return stage(str(location), options or RemoteOptions(), option=option)
    return Path(location)
