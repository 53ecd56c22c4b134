"""``shards pack``: a source (see ``shards.sources``) into a shard set, in parallel, atomically.

Flow: open the source → choose samples (``--shuffle-seed`` order, ``--per-class``, ``--limit``) →
batches go to a pool of encoding workers (at most a few batches in flight, so memory stays flat) →
the main process writes them, in order, with ``ShardSetWriter`` into a temporary folder inside
``--out`` → when the set is complete it replaces whatever shard set ``--out`` held.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .encode import EncodeConfig, encode_batch
from .manifest import MANIFEST_NAME, Manifest, ShardError
from .sources import ArraySource, Source, open_source
from .writer import ShardSetWriter


@dataclass(frozen=True)
class PackConfig:
    out: Path
    name: str = ""  # default: the --out folder's name
    kind: str = "real"
    split: str = "train"
    format: str = "jpg"
    quality: int = 95
    shard_size: int = 10000
    shuffle_seed: int | None = None
    limit: int | None = None
    per_class: int | None = None
    keep_labels: bool = False
    fid: float | None = None
    workers: int = 0  # 0 = one per core
    strict: bool = False
    overwrite: bool = False
    batch_size: int = 256  # samples per worker task
    progress: bool = True
    command: str = ""


@dataclass
class PackResult:
    manifest: Manifest
    detected: str
    written: int
    skipped: list[dict]
    how: Counter = field(default_factory=Counter)  # "passthrough" / "encoded" / "raw" counts
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.manifest
        rate = self.written / self.seconds if self.seconds > 0 else float("nan")
        how = ", ".join(f"{v} {k}" for k, v in sorted(self.how.items()))
        size = "×".join(map(str, m.image_size)) if m.image_size else "mixed"
        lines = [
            f"source:  {self.detected}",
            f"wrote:   {m.count} samples ({how}) as {m.format} {size} in {len(m.shards)} shard(s), "
            f"name {m.name!r}, kind {m.kind}, split {m.split}, {self.seconds:.1f} s ({rate:,.0f} images/s)",
        ]
        if m.classes:
            lines.append(f"classes: {len(m.classes)} ({', '.join(m.classes[:10])}{', …' if len(m.classes) > 10 else ''})")
        lines.append(f"skipped: {len(self.skipped)}")
        for s in self.skipped[:20]:
            lines.append(f"  {s['path']}: {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  … {len(self.skipped) - 20} more, all listed in {MANIFEST_NAME}")
        return "\n".join(lines)


def select(labels: np.ndarray, *, shuffle_seed: int | None, limit: int | None, per_class: int | None, where: str) -> np.ndarray:
    """Positions to pack, in write order. With a seed the order is a seeded permutation and
    ``--limit`` / ``--per-class`` take a random subset; without one, the first ones in source order."""
    n = len(labels)
    order = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else np.arange(n)
    if per_class is not None:
        if per_class < 1:
            raise ShardError(f"--per-class {per_class}: must be at least 1")
        if not (labels >= 0).any():
            raise ShardError(f"{where}: --per-class needs labels, and this source is unlabelled; use --limit")
        lab = labels[order]
        rank = np.zeros(n, dtype=np.int64)
        for c in np.unique(lab):
            hit = lab == c
            rank[hit] = np.arange(hit.sum())
        order = order[rank < per_class]
    if limit is not None:
        if limit < 1:
            raise ShardError(f"--limit {limit}: must be at least 1")
        order = order[:limit]
    return order


def pack(src: str | os.PathLike | Source, cfg: PackConfig, *, subdir: str = "", layout: str = "auto") -> PackResult:
    """Pack ``src`` (a path, or an already opened Source) as described by ``cfg``."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    name = cfg.name or out.resolve().name
    if cfg.kind not in ("real", "generated"):
        raise ShardError(f"--kind {cfg.kind!r}: use real or generated")
    _check_out(out, cfg.overwrite)
    drop_labels = cfg.kind == "generated" and not cfg.keep_labels
    # the first --limit images, unlabelled anyway: an archive need not be listed to its end
    early = cfg.limit if cfg.shuffle_seed is None and cfg.per_class is None and (drop_labels or layout == "flat") else None
    source = src if isinstance(src, Source) else open_source(src, subdir=subdir, split=cfg.split, layout=layout, stop_after=early)
    skipped = list(source.skipped)
    if cfg.strict and skipped:
        raise ShardError(f"{skipped[0]['path']}: {skipped[0]['reason']} ({len(skipped)} such files; --strict refuses them, drop --strict to skip them)")
    order = select(source.labels, shuffle_seed=cfg.shuffle_seed, limit=cfg.limit, per_class=cfg.per_class, where=source.detected)
    if len(order) == 0:
        raise ShardError(f"{src}: nothing to pack; check the source, --limit and --per-class")
    classes = () if drop_labels else source.classes
    width = max(6, len(str(len(source) - 1)))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".pack-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ecfg = EncodeConfig(format=cfg.format, quality=cfg.quality)
    how: Counter = Counter()
    ok = False
    try:
        writer = ShardSetWriter(tmp, name, kind=cfg.kind, format=cfg.format, split=cfg.split,
                                shard_size=cfg.shard_size, classes=classes, fid=cfg.fid, command=cfg.command)
        with writer, tqdm(total=len(order), unit="img", desc=f"pack {name}", disable=not cfg.progress,
                          file=sys.stderr, mininterval=0.5) as bar:
            for batch, results in _encoded(source, order, ecfg, cfg):
                for pos, (data, size, info) in zip(batch.positions, results):
                    pos = int(pos)
                    if data is None:
                        item = {"path": source.origin(pos), "reason": info}
                        if cfg.strict:
                            raise ShardError(f"{item['path']}: {info} (--strict refuses bad inputs; drop --strict to skip them)")
                        skipped.append(item)
                        continue
                    label = -1 if drop_labels else int(source.labels[pos])
                    writer.add(f"{pos:0{width}d}", data, label, source.origin(pos), size)
                    how[info] += 1
                bar.update(len(batch.positions))
            writer.skipped = list(skipped)
            if not how:
                raise ShardError(f"{src}: none of the {len(order)} selected inputs could be packed "
                                 f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
        manifest = writer.manifest
        _install(tmp, out, manifest)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and created and out.exists() and not any(out.iterdir()):
            out.rmdir()
    return PackResult(manifest, source.detected, manifest.count, skipped, how, time.perf_counter() - t0)


def _encoded(source: Source, order: np.ndarray, ecfg: EncodeConfig, cfg: PackConfig):
    """(batch, results) in order; encoding runs in a worker pool with a bounded number of batches
    in flight (Pool.imap would read the whole source ahead into its queue)."""
    workers = cfg.workers or os.cpu_count() or 1
    batches = source.batches(order, cfg.batch_size)
    # raw pixels from an array need no encoding: shipping them to a worker and back costs more
    trivial = ecfg.format == "raw" and isinstance(source, ArraySource)
    if workers <= 1 or trivial or len(order) <= cfg.batch_size:
        for b in batches:
            yield b, encode_batch(b.kind, b.payload, ecfg)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append((b, pool.apply_async(encode_batch, (b.kind, b.payload, ecfg))))
            if len(pending) >= 2 * workers:
                b0, r0 = pending.popleft()
                yield b0, r0.get()
        while pending:
            b0, r0 = pending.popleft()
            yield b0, r0.get()


def _shard_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and (p.suffix in (".tar", ".idx") or p.name == MANIFEST_NAME))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and _shard_files(out) and not overwrite:
        raise ShardError(f"{out}: already holds shards; pass --overwrite to replace them or choose another --out")


def _install(tmp: Path, out: Path, manifest: Manifest) -> None:
    """Move a complete set from ``tmp`` into ``out``. The old manifest goes first (so the folder is
    never a mix that claims to be complete), the new manifest last."""
    old = _shard_files(out)
    if (out / MANIFEST_NAME).exists():
        (out / MANIFEST_NAME).unlink()
    new = {s.file for s in manifest.shards} | {s.index for s in manifest.shards}
    for p in old:
        if p.name not in new and p.exists():
            p.unlink()
    for f in sorted(new):
        os.replace(tmp / f, out / f)
    os.replace(tmp / MANIFEST_NAME, out / MANIFEST_NAME)
