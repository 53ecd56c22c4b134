"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``ckpt-last.pt`` — one writer, no clobbering.

Like git refusing to overwrite a repository, a new run never starts inside a directory that already
holds a run: it refuses with one line naming ``--resume DIR`` or a new ``--out``. Like a database, a run
holds an exclusive lock on its directory (``shards.base.lock.OutputLock``) while it writes there, so a second
``train.py`` with the same ``--out`` (or a resume of a run still going) refuses instead of interleaving
records and checkpoints. Only rank 0 writes.
"""

from __future__ import annotations

import errno
from pathlib import Path

from models.training.checkpoint import CKPT_LAST
from models.training.metrics import Metrics
from shards.base.errors import ConfigError
from shards.base.lock import OutputLock

RUN_FILES = ("config.yaml", "metrics.jsonl", CKPT_LAST)


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def check_out(path: Path, continues: bool = False) -> None:
    """Refuse (one line) a run directory that is a file or already holds a run this command does not continue."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a directory; choose another --out")
    if path.is_dir() and holds_run(path) and not continues:
        if not (path / CKPT_LAST).exists():  # stopped before its first checkpoint: nothing to resume
            raise ConfigError(
                f"--out {path}: holds a run that never saved a checkpoint (config.yaml / metrics.jsonl, no "
                f"{CKPT_LAST}: stopped before its first); there is nothing to resume: remove it or choose a new --out"
            )
        raise ConfigError(
            f"--out {path}: already holds a run (config.yaml / metrics.jsonl / {CKPT_LAST}); "
            f"continue it with `python train.py --resume {path}` or choose a new --out"
        )


class RunDir:
    """Open with ``RunDir(path, resume_step=..., master=...)``; ``resume_step`` is None for a new run (the
    directory must not hold a run) or the checkpoint's step (records past it are dropped)."""

    def __init__(
        self, path: str | Path, *, resume_step: int | None = None, master: bool = True, continues: bool = False
    ):
        self.path = Path(path)
        self.master = master
        self.metrics = Metrics(None)
        self.lock = None
        if not master:
            return
        check_out(self.path, continues)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"--out {self.path}: cannot write there ({_why(e)}); choose another --out") from None
        self.lock = OutputLock(self.path, "train.py").acquire()  # LockHeld (one line) when another run writes here
        try:
            self.metrics = Metrics(self.path, keep_until_step=resume_step)
        except BaseException:
            self.lock.release()
            raise

    def write_config(self, doc: dict) -> None:
        if not self.master:
            return
        import yaml

        from shards.base.atomic import atomic_write_text

        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(doc, sort_keys=False))

    def close(self) -> None:
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _why(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a parent of it is a file"
    return e.strerror or str(e)
