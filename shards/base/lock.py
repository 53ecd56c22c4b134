"""An exclusive lock on an output folder, so that two writers never fill one folder at once.

Two ``shards pack`` runs into one ``--out`` would both report success while one silently replaced the
other; two training runs in one run directory likewise. :class:`OutputLock` keeps both to one writer:

    with OutputLock(out, "shards pack"):
        ...  # only one holder at a time; a second one gets LockHeld (a UserError) naming the holder

How (the way git's ``index.lock`` and databases' lock files work, plus ``flock`` for crashes):

* the lock is a file ``DIR/.lock`` created with ``O_CREAT|O_EXCL`` (atomic: exactly one creator
  wins), holding the holder's pid, host, process start time, what it does and its command line;
* the holder also keeps an ``fcntl.flock`` on that file for as long as it holds the lock, so the
  kernel releases it when the holder dies, however it dies (SIGKILL included);
* a second writer that finds the file tries the ``flock``: when it is still held the lock is live
  and the writer refuses with one line naming the holder's pid and the folder; when it is free the
  holder is gone, and the lock is taken over if the recorded holder was on this host and its
  process is no longer running (pid dead, or reused by another process: its start time differs).
  A lock written on another host is never taken over (its process cannot be checked from here): the
  message says which host and how to remove it by hand, as git does for a stale ``index.lock``;
* release removes the file *before* unlocking it, and whoever acquires checks that the file it
  locked is still the one at ``DIR/.lock`` (same inode), so a release racing with an acquire can
  never leave two holders.

Processes forked while the lock is held inherit the ``flock`` (it belongs to the open file, not to
the process); a fork that may outlive the holder (a worker pool) should call ``os.close`` on
:attr:`OutputLock.fd` first (see ``shards.packing.pack``), so an orphaned worker cannot keep the lock.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from shards.base.errors import UserError

LOCK_NAME = ".lock"


class LockHeld(UserError):
    """Another live process holds the lock (the message names its pid, host and the folder)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when no such process runs."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # exists, but we may not look at it (another user's process)
        return -1.0


class OutputLock:
    """Exclusive lock on ``directory`` (created if missing) by a lock file ``directory/.lock``.

    ``what`` says what the holder does (``"shards pack"``, ``"train.py"``); it is recorded in the
    lock file and shown to anyone refused. Use as a context manager or ``acquire()`` / ``release()``.
    Not re-entrant: a second ``OutputLock`` on the same folder, even in the same process, is refused.
    """

    def __init__(self, directory: str | os.PathLike, what: str, *, command: str | None = None):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self.command = command if command is not None else shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.fd: int | None = None

    # -- public --------------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`LockHeld` (one line); OSErrors (e.g. a read-only folder) pass."""
        if self.fd is not None:
            raise UserError(f"{self.directory}: lock already held by this OutputLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # retries only when a release races with us; each try is a few syscalls
            fd = self._create()
            if fd is not None:
                self.fd = fd
                return self
            fd = self._open_existing()
            if fd is None:
                continue  # the file went away between our create and open: try to create it again
            if not _try_flock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise self._held(holder)
            # we hold the flock of whatever file we opened; is it still the lock file?
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            holder = _read_holder(fd)
            verdict = self._judge(holder)
            if verdict != "stale":
                os.close(fd)
                raise self._held(
                    holder, f"if nothing runs there any more, remove {self.path}" if verdict == "elsewhere" else ""
                )
            self._write_holder(fd)  # take it over: it is ours now (we hold its flock)
            self.fd = fd
            return self
        raise UserError(f"{self.path}: could not take the lock (it kept changing); try again")

    def release(self) -> None:
        """Remove the lock file, then drop the flock (see the module docstring for the order)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a read-only folder after a failure: the flock still goes, the next holder takes over
        finally:
            os.close(fd)

    def holder(self) -> dict | None:
        """What the lock file says about its holder, None when there is no lock file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals -----------------------------------------------------------------------------------
    def _create(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return None
        if not _try_flock(fd):
            # someone opened our brand-new (still empty) file, found it unlocked and took it over
            holder = _read_holder(fd)
            os.close(fd)
            raise self._held(holder)
        self._write_holder(fd)
        return fd

    def _open_existing(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def _write_holder(self, fd: int) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_time": _start_time(os.getpid()),
            "what": self.what,
            "command": self.command,
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        data = (json.dumps(me) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _judge(self, holder: dict) -> str:
        """ "stale", "live" or "elsewhere" (another host: cannot be checked from here).

        Called only once we hold the flock, so no holder that keeps its flock remains; the pid check
        also covers filesystems without flock and holders that did not flock."""
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int):
            return "stale"  # its creator died before writing it
        if host != socket.gethostname():
            return "elsewhere"
        started = _start_time(pid)
        if started is None:
            return "stale"  # no such process
        if started >= 0 and holder.get("start_time") is not None and abs(started - float(holder["start_time"])) > 1.0:
            return "stale"  # the pid now belongs to another process
        return "live"

    def _held(self, holder: dict, fix: str = "") -> LockHeld:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        where = f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on host {host}"
        what = holder.get("what") or "another writer"
        since = f" since {holder['since']}" if holder.get("since") else ""
        fix = fix or "wait for it to finish, or write somewhere else"
        return LockHeld(f"{self.directory}: in use by {what} ({where}{since}); {fix}", holder)


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        d = json.loads(data.decode() or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_flock(fd: int) -> bool:
    """Non-blocking exclusive flock; True when we got it (or the filesystem has no flock at all)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return True  # no flock here: the pid check alone decides
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESTALE):
            return False
        raise
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
