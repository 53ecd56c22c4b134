"""What a run tells: ``metrics.jsonl`` + TensorBoard for machines, a progress bar or log lines for people.

``Metrics`` writes one JSON object per line (``kind``: train / eval / final / ...) and the same scalars to
TensorBoard, on rank 0 only. On resume it keeps the records up to the checkpoint's step (a run extended
with a larger ``--steps`` keeps its earlier ``final`` record: it describes the model at that step) and
TensorBoard keeps the events up to it too (``purge_step`` is the step after the checkpoint's: events at
the checkpoint's own step were written before it and stay); a torn last line (a crash mid-write) is
dropped, not fatal.

``Progress`` is a tqdm bar when stderr is a terminal wide enough to draw one; anywhere else (CI, ``> run.log``,
a cluster job, a terminal that reports 0 columns, where tqdm would draw nothing) it writes one plain line every
``--log-every`` steps instead of carriage-return redraws.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from shards.base.progress import duration


class Metrics:
    """metrics.jsonl (one JSON object per line) and TensorBoard scalars; ``Metrics(None)`` writes nothing."""

    def __init__(self, run_dir: Path | None, keep_until_step: int | None = None, tensorboard: bool = True):
        self.file = self.tb = None
        self.dropped = 0  # unreadable lines dropped on resume (a torn last line)
        if run_dir is None:
            return
        path = Path(run_dir) / "metrics.jsonl"
        if keep_until_step is not None and path.exists():  # resume: drop records past the checkpoint
            from shards.base.atomic import atomic_write_text

            kept = []
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line) if line.strip() else None
                except ValueError:
                    self.dropped += 1  # a crash can tear the last line
                    continue
                if isinstance(rec, dict) and rec.get("step", 0) <= keep_until_step:
                    kept.append(line)
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.file = open(path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if keep_until_step is None else keep_until_step + 1  # hide only what came after it
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def write(self, kind: str, step: int, **values) -> dict:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        if self.file is None:
            return record
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
        return record

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# Record keys renamed since: an older run's metrics.jsonl reads with today's names.
RENAMED_KEYS = {"probe_acc": "online_probe_acc_train_views"}  # the online probe on the training views


def read_records(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (of one ``kind``), skipping a torn line; keys an older version
    wrote (``RENAMED_KEYS``) under today's names."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (kind is None or rec.get("kind") == kind):
                out.append({RENAMED_KEYS.get(k, k): v for k, v in rec.items()})
    return out


MIN_BAR_COLUMNS = 40  # narrower (a serial console or a pseudo-terminal reporting 0 columns): plain lines


def terminal_columns(stream) -> int:
    """The width of the terminal ``stream`` writes to, as tqdm sees it (0 when it reports none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """A tqdm bar on a terminal of at least ``MIN_BAR_COLUMNS`` columns; elsewhere (or with ``bar=False``) a
    plain line per ``log()`` call."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, bar: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled = total, enabled
        self.t0, self.step0 = time.perf_counter(), initial
        self.bar = None
        tty = getattr(self.stream, "isatty", lambda: False)()
        if enabled and bar and tty and terminal_columns(self.stream) >= MIN_BAR_COLUMNS:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, record: dict) -> None:
        """Show the figures of a log step: bar postfix, or one line ``step S/T (P%) epoch E loss ... eta``."""
        if not self.enabled:
            return
        shown = {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.3g}",
            "sps": f"{record['samples_per_s']:.0f}",
            "wait": f"{record['data_wait']:.0%}",
        }
        if record.get("corrupt_skipped"):
            shown["skipped"] = str(record["corrupt_skipped"])
        if self.bar is not None:
            self.bar.set_postfix(shown)
            return
        done = step - self.step0
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        figures = " ".join(f"{k} {v}" for k, v in shown.items())
        self.write(
            f"step {step}/{self.total} ({step / self.total:.0%}) epoch {record.get('epoch', 0)} {figures}"
            f" eta {duration(eta)}"
        )

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
