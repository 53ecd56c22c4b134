"""``shards pack``: a source (see ``shards.packing.sources``) into a shard set, in parallel, atomically.

Flow: open the source → choose samples (``--shuffle-seed`` order, ``--per-class``, ``--limit``) →
choose the format (``auto``: see :func:`resolve_format`) → lock ``--out`` (``shards.base.lock``) →
batches go to a pool of encoding workers (at most a few batches in flight, so memory stays flat) →
the main process writes them, in order, with ``ShardSetWriter`` into a temporary folder inside
``--out`` → when the set is complete it is installed beside the old one (see :func:`_install`).

What ``--out`` may hold, and what pack touches (git refuses to clobber untracked files; so does this):

* pack only ever removes files that the previous ``manifest.json`` lists, and only once the new
  manifest is in place; ``.tar``/``.idx`` files that no manifest owns (a user's archive, the very
  source being packed) make it refuse, with or without ``--overwrite``;
* one writer at a time: ``DIR/.lock`` (``shards.base.lock.OutputLock``); a second pack refuses;
* at every instant the folder holds a complete valid set, the old or the new: the new shards get
  names the old set does not use (``NAME-00000.tar`` and ``NAME-g1-00000.tar`` alternate), the
  manifest is replaced by one atomic rename (the commit point), and the old files go after it. The
  temporary folder ``.pack-PID-TOKEN.tmp`` holds a journal (``install.json``: new and old file names)
  during the install, so whatever a kill leaves behind, the next pack (under the lock) finishes or
  undoes it and removes the temporary folders of packs that are gone.

Every ``OSError`` (permission denied, read-only disk, disk full, a file where a folder should be)
becomes one line naming the path and what to do, and leaves ``--out`` as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.base.atomic import atomic_write_text
from shards.base.errors import ShardError
from shards.base.interrupt import fork_context, ignore_in_worker, start_pool, stop_pool
from shards.base.lock import OutputLock
from shards.base.progress import progress
from shards.format.manifest import MANIFEST_NAME, Manifest, check_name
from shards.format.schema import PACK_FORMATS
from shards.packing.encode import EncodeConfig, encode_batch
from shards.packing.sources import ArraySource, InputSource, open_source
from shards.packing.writer import ShardSetWriter
from shards.read.index import existing_caches

RAW_MAX_SIDE = 64  # arrays up to 64×64 are stored as raw pixels by default: lossless and no decode cost
TMP_PREFIX, TMP_SUFFIX = ".pack-", ".tmp"
JOURNAL = "install.json"


@dataclass(frozen=True)
class PackConfig:
    out: Path
    name: str = ""  # default: the --out folder's name
    kind: str = "real"
    split: str = "train"
    format: str = "auto"  # auto | jpg | png | raw, see resolve_format
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
    how: Counter = field(default_factory=Counter)  # "passthrough" / "lossless" / "lossy" counts
    seconds: float = 0.0
    format_note: str = ""  # why this format (auto) or what it does to the inputs
    warnings: list[str] = field(default_factory=list)  # one line each, also in summary()

    def summary(self) -> str:
        m = self.manifest
        rate = self.written / self.seconds if self.seconds > 0 else float("nan")
        q = (m.encoding or {}).get("quality")
        words = {"passthrough": "passthrough", "lossless": "stored losslessly", "lossy": f"lossy JPEG q{q}"}
        how = ", ".join(f"{v} {words.get(k, k)}" for k, v in sorted(self.how.items()))
        size = "×".join(map(str, m.image_size)) if m.image_size else "mixed"
        lines = [
            f"source:  {self.detected}",
            f"format:  {m.format}: {self.format_note}",
            f"wrote:   {m.count} samples ({how}) as {m.format} {size} in {len(m.shards)} shard(s), "
            f"name {m.name!r}, kind {m.kind}, split {m.split}, {self.seconds:.1f} s ({rate:,.0f} images/s)",
        ]
        if m.classes:
            lines.append(
                f"classes: {len(m.classes)} ({', '.join(m.classes[:10])}{', …' if len(m.classes) > 10 else ''})"
            )
        lines.append(f"skipped: {len(self.skipped)}")
        for s in self.skipped[:20]:
            lines.append(f"  {s['path']}: {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  … {len(self.skipped) - 20} more, all listed in {MANIFEST_NAME}")
        return "\n".join(lines)


def select(
    labels: np.ndarray, *, shuffle_seed: int | None, limit: int | None, per_class: int | None, where: str
) -> np.ndarray:
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


def resolve_format(requested: str, source: InputSource, order: np.ndarray) -> tuple[str, str]:
    """The set's format and a few words on why. ``auto`` never loses information:

    * every input JPEG → ``jpg``, every input PNG → ``png``: the files pass through byte for byte;
    * pixel arrays (npz/npy, CIFAR pickles) → ``raw`` up to 64×64 (no decode cost at all), ``png``
      above (raw would be large);
    * a mix (JPEG with PNG, or WebP/BMP) → ``png``: a set has one format (``manifest.format``, which
      the loaders read), so the PNG inputs pass through and the others are decoded and stored as
      PNG, exactly the pixels they decode to (nothing further is lost; a JPEG grows about 2-3×).
      ``--format jpg`` keeps the JPEGs as they are and re-encodes the rest lossily instead (a
      warning says so).
    """
    if requested not in PACK_FORMATS:
        raise ShardError(f"--format {requested!r}: use one of {', '.join(PACK_FORMATS)}")
    formats = source.input_formats(order)
    if requested != "auto":
        return requested, "as asked (--format)"
    if set(formats) <= {"array"}:
        shape = source.image_shape
        if shape is not None and max(shape) <= RAW_MAX_SIDE:
            return "raw", f"pixel arrays of {shape[0]}×{shape[1]} stored as raw pixels (lossless, no decode cost; auto)"
        return "png", "pixel arrays stored as PNG (lossless; auto)"
    if set(formats) == {"jpeg"}:
        return "jpg", "JPEG inputs kept as they are (auto)"
    if set(formats) == {"png"}:
        return "png", "PNG inputs kept as they are (auto)"
    mix = ", ".join(f"{n} {f}" for f, n in formats.most_common())
    return "png", (
        f"the inputs mix formats ({mix}), a set has one: PNG inputs kept as they are, the others "
        "stored as PNG with exactly their decoded pixels (auto; --format jpg would keep the JPEGs "
        "and re-encode the rest lossily)"
    )


def pack(
    src: str | os.PathLike | InputSource, cfg: PackConfig, *, subdir: str = "", layout: str = "auto"
) -> PackResult:
    """Pack ``src`` (a path, or an already opened InputSource) as described by ``cfg``."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    name = (
        check_name(cfg.name, "--name") if cfg.name else check_name(out.resolve().name, f"--out {out}: its folder name")
    )
    if cfg.kind not in ("real", "generated"):
        raise ShardError(f"--kind {cfg.kind!r}: use real or generated")
    if cfg.format not in PACK_FORMATS:
        raise ShardError(f"--format {cfg.format!r}: use one of {', '.join(PACK_FORMATS)}")
    try:
        _precheck_out(out)
        created = _missing_dirs(out)
        try:
            with OutputLock(out, "shards pack", command=cfg.command or None) as lock:
                recover(out)
                old = _check_out(out, cfg.overwrite)
                source, order, skipped, drop_labels = _open_and_select(src, cfg, subdir, layout)
                fmt, note = resolve_format(cfg.format, source, order)
                where = source.detected if isinstance(src, InputSource) else str(src)
                manifest, how, warnings, per_label = _write_and_install(
                    source, order, fmt, name, skipped, drop_labels, old, lock, cfg, where
                )
        finally:
            for d in created:  # folders this pack made, if it leaves them empty
                try:
                    d.rmdir()
                except OSError:
                    break
    except OSError as e:
        raise ShardError(describe_os_error(e, out)) from None
    warnings += _per_class_warning(cfg.per_class, source, per_label)
    warnings += _unlabelled_real_warning(manifest, source)
    return PackResult(manifest, source.detected, manifest.count, skipped, how, time.perf_counter() - t0, note, warnings)


def _open_and_select(src, cfg: PackConfig, subdir: str, layout: str) -> tuple[InputSource, np.ndarray, list, bool]:
    drop_labels = cfg.kind == "generated" and not cfg.keep_labels
    # the first --limit images, unlabelled anyway: an archive need not be listed to its end
    early = (
        cfg.limit if cfg.shuffle_seed is None and cfg.per_class is None and (drop_labels or layout == "flat") else None
    )
    source = (
        src
        if isinstance(src, InputSource)
        else open_source(src, subdir=subdir, split=cfg.split, layout=layout, stop_after=early)
    )
    skipped = list(source.skipped)
    if cfg.strict and skipped:
        raise ShardError(
            f"{skipped[0]['path']}: {skipped[0]['reason']} ({len(skipped)} such files; "
            "--strict refuses them, drop --strict to skip them)"
        )
    order = select(
        source.labels, shuffle_seed=cfg.shuffle_seed, limit=cfg.limit, per_class=cfg.per_class, where=source.detected
    )
    if len(order) == 0:
        raise ShardError(f"{src}: nothing to pack; check the source, --limit and --per-class")
    return source, order, skipped, drop_labels


def _write_and_install(
    source: InputSource,
    order: np.ndarray,
    fmt: str,
    name: str,
    skipped: list,
    drop_labels: bool,
    old: Manifest | None,
    lock: OutputLock,
    cfg: PackConfig,
    where: str,
) -> tuple[Manifest, Counter, list[str], Counter]:
    """Encode and write into a temporary folder, then install; returns the manifest, the "how" counts,
    warnings, and the written samples per *source* label (for --per-class, even when labels are dropped)."""
    out = lock.directory
    stem = _free_stem(out, name)
    tmp = out / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    tmp.mkdir()
    classes = () if drop_labels else source.classes
    width = max(6, len(str(len(source) - 1)))
    ecfg = EncodeConfig(format=fmt, quality=cfg.quality)
    how: Counter = Counter()
    formats: Counter = Counter()
    per_label: Counter = Counter()
    warnings: list[str] = []
    try:
        writer = ShardSetWriter(
            tmp,
            name,
            kind=cfg.kind,
            format=fmt,
            split=cfg.split,
            shard_size=cfg.shard_size,
            classes=classes,
            fid=cfg.fid,
            command=cfg.command,
            stem=stem,
        )
        with writer, progress(len(order), f"pack {name}", "img", enabled=cfg.progress, summary_follows=True) as bar:
            for batch, results in _encoded(source, order, ecfg, cfg, lock.fd):
                for pos, (data, size, info, src_fmt) in zip(batch.positions, results):
                    pos = int(pos)
                    if data is None:
                        item = {"path": source.origin(pos), "reason": info}
                        if cfg.strict:
                            raise ShardError(
                                f"{item['path']}: {info} (--strict refuses bad inputs; drop --strict to skip them)"
                            )
                        skipped.append(item)
                        continue
                    label = -1 if drop_labels else int(source.labels[pos])
                    writer.add(f"{name}/{pos:0{width}d}", data, label, source.origin(pos), size)  # keys unique per set
                    how[info] += 1
                    formats[src_fmt] += 1
                    per_label[int(source.labels[pos])] += 1
                bar.update(len(batch.positions))
            writer.skipped = list(skipped)
            if not how:
                raise ShardError(
                    f"{where}: none of the {len(order)} selected inputs could be packed "
                    f"(first: {skipped[0]['path']}: {skipped[0]['reason']})"
                )
            writer.encoding = encoding_record(fmt, formats, how, cfg)
        manifest = writer.manifest
        warnings += _lossy_warning(manifest, formats, cfg)
        warnings += _install(tmp, out, manifest, old)
    finally:
        _finish_or_undo(tmp, out)
    return manifest, how, warnings, per_label


def encoding_record(fmt: str, formats: Counter, how: Counter, cfg: PackConfig) -> dict:
    """The manifest's ``encoding`` (see ``shards.format.manifest``)."""
    from_files = sum(n for f, n in formats.items() if f != "array")
    return {
        "format": fmt,
        "requested": cfg.format,
        "source_formats": dict(formats.most_common()),
        "passthrough": how["passthrough"],
        "reencoded": from_files - how["passthrough"],
        "lossy_reencoded": how["lossy"],
        "quality": cfg.quality if how["lossy"] else None,
    }


def _lossy_warning(m: Manifest, formats: Counter, cfg: PackConfig) -> list[str]:
    lossy = m.encoding["lossy_reencoded"]
    if not lossy:
        return []
    inputs = ", ".join(f"{f} {n}" for f, n in formats.most_common())
    fix = (
        "drop --format jpg (the default, auto, keeps them lossless)"
        if cfg.format == "jpg"
        else "check the inputs, or pass --format png to keep them lossless"
    )
    return [
        f"warning: {lossy} of {m.count} images were re-encoded lossily as JPEG q{cfg.quality} (inputs: {inputs}); {fix}"
    ]


def _unlabelled_real_warning(m: Manifest, source: InputSource) -> list[str]:
    """A set packed as ``--kind real`` (the default) without a single label: most likely generator output
    that was not marked, which train.py would weight as real data (and then use the no-inflation recipe)."""
    if m.kind != "real" or m.labelled:
        return []
    what = "an unlabelled flat folder" if "flat folder" in source.detected else "an unlabelled source"
    return [
        f"warning: {m.name!r} has no labels and was packed as --kind real (the default); {what} looks like "
        "generator output: if it is, re-pack with --kind generated --overwrite (train.py would otherwise weight "
        "it as real data, and with no generated source drop the AdaInf recipe); labelled real images come as "
        "one folder per class (ImageFolder) or with KEY.cls labels"
    ]


def _per_class_warning(per_class: int | None, source: InputSource, per_label: Counter) -> list[str]:
    """--per-class N that the source cannot meet gives what it has, unbalanced: say so, per class.

    A warning, not an error: ``--per-class`` means *at most* N per class, and a source that has fewer
    (or whose few unreadable files were skipped) still makes a usable set; what must not happen is
    an unbalanced set nobody noticed."""
    if per_class is None:
        return []
    present = sorted(int(c) for c in np.unique(source.labels) if c >= 0)
    got = {c: int(per_label.get(c, 0)) for c in present}
    short = [c for c in present if got[c] < per_class]
    if not short:
        return []
    cname = lambda c: source.classes[c] if c < len(source.classes) else str(c)  # noqa: E731
    listed = ", ".join(f"{cname(c)} {got[c]}" for c in short[:12]) + (", …" if len(short) > 12 else "")
    others = f"; the others {per_class}" if len(short) < len(present) else ""
    return [
        f"warning: --per-class {per_class} not met for {len(short)} of {len(present)} classes (got {listed}{others}); "
        f"the set is unbalanced"
    ]


def _encoded(source: InputSource, order: np.ndarray, ecfg: EncodeConfig, cfg: PackConfig, lock_fd: int | None = None):
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
    ctx = fork_context()
    lock_fd = lock_fd if ctx.get_start_method() == "fork" else None
    pool = start_pool(ctx, workers, _worker_init, (lock_fd,))
    try:
        pending: deque = deque()
        for b in batches:
            pending.append((b, pool.apply_async(encode_batch, (b.kind, b.payload, ecfg))))
            if len(pending) >= 2 * workers:
                b0, r0 = pending.popleft()
                yield b0, r0.get()
        while pending:
            b0, r0 = pending.popleft()
            yield b0, r0.get()
    except BaseException:  # interrupted (Ctrl-C, SIGTERM), a failed batch, the consumer gone
        stop_pool(pool)
        raise
    pool.close()
    pool.join()


def _worker_init(lock_fd: int | None) -> None:
    """In each forked encoding worker: SIGINT ignored (a Ctrl-C reaches the whole process group; the
    parent stops the workers, which would otherwise each print a KeyboardInterrupt traceback), SIGTERM
    back to its default (the pool stops its workers with SIGTERM; the CLI's handler, inherited by the fork,
    would turn that into a KeyboardInterrupt inside the worker and hang the pool's shutdown), and close the
    inherited lock fd (its flock belongs to the open file: a worker outliving a killed pack would keep
    --out locked)."""
    ignore_in_worker()
    if lock_fd is not None:
        try:
            os.close(lock_fd)
        except OSError:
            pass


# -- the output folder ------------------------------------------------------------------------------


def _shard_like(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.suffix in (".tar", ".idx") and p.is_file())


def _missing_dirs(out: Path) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, deepest first (what mkdir -p would create)."""
    missing, p = [], out.absolute()
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _precheck_out(out: Path) -> None:
    """``--out`` and its first existing ancestor must be folders (before anything is created)."""
    p = out.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        what = "--out" if p == out.absolute() else "a parent of --out"
        raise ShardError(f"{p}: {what} is a file, not a folder; choose another --out")


def _owned(out: Path) -> set[str]:
    if not (out / MANIFEST_NAME).is_file():
        return set()
    try:
        return Manifest.load(out).files
    except ShardError:
        return set()


def _check_out(out: Path, overwrite: bool) -> Manifest | None:
    """Under the lock, after :func:`recover`: the previous manifest (None if none), or a ShardError if
    pack may not write here."""
    old = None
    if (out / MANIFEST_NAME).exists():
        try:
            old = Manifest.load(out)
        except ShardError as e:
            raise ShardError(
                f"{e}; pack cannot tell which files it owns, so it replaces nothing: "
                "move the folder's shards away or choose another --out"
            ) from None
        if not overwrite:
            raise ShardError(
                f"{out}: already holds a shard set; pass --overwrite to replace it or choose another --out"
            )
    owned = old.files if old else set()
    stray = [p for p in _shard_like(out) if p.name not in owned]
    if stray:
        raise _unowned_error(out, stray)
    return old


def _unowned_error(out: Path, stray: list[Path]) -> ShardError:
    names = ", ".join(p.name for p in stray[:3]) + (", …" if len(stray) > 3 else "")
    return ShardError(
        f"{out}: holds {len(stray)} .tar/.idx file(s) that no manifest.json here lists ({names}); "
        "pack replaces only files its own manifest lists: move them away or choose another --out"
    )


def _free_stem(out: Path, name: str) -> str:
    """``NAME`` unless files of that pattern exist (the old set), then ``NAME-g1``, ``NAME-g2``, …"""
    present = {p.name for p in out.iterdir()}
    for g in range(10_000):
        stem = name if g == 0 else f"{name}-g{g}"
        pat = re.compile(re.escape(stem) + r"-\d+\.(tar|idx)")
        if not any(pat.fullmatch(n) for n in present):
            return stem
    raise ShardError(f"{out}: no free file names for {name!r}; choose another --out")


def _install(tmp: Path, out: Path, manifest: Manifest, old: Manifest | None) -> list[str]:
    """Move the complete set from ``tmp`` into ``out`` beside the old one, then commit (replace the
    manifest), then remove the old files. The journal in ``tmp`` lets :func:`recover` finish or undo
    an install that was killed half-way. Returns warnings (old files that could not be removed)."""
    new = sorted(manifest.files)
    old_files = sorted((old.files if old else set()) - set(new))
    atomic_write_text(tmp / JOURNAL, json.dumps({"new": new, "old": old_files}) + "\n")
    for f in new:
        if os.path.lexists(out / f):  # _free_stem chose names that were free; never replace anything
            raise ShardError(f"{out / f}: appeared while packing; nothing was replaced, pack again")
        os.replace(tmp / f, out / f)
    fsync_dir(out)
    os.replace(tmp / MANIFEST_NAME, out / MANIFEST_NAME)  # the commit point
    fsync_dir(out)
    left = _remove(out, old_files)
    if left:
        return [
            f"warning: could not remove {len(left)} file(s) of the previous set ({left[0]}); "
            "they are not used, and the next pack into this folder removes them"
        ]
    return []


def recover(out: Path) -> list[str]:
    """Finish or undo what packs that are gone left in ``out`` (call it holding the lock: then every
    temporary folder is stale, since its writer would hold the lock). Returns what it did."""
    done = []
    for tmp in sorted(out.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}")):
        if tmp.is_dir():
            done.append(f"{tmp.name}: {_finish_or_undo(tmp, out)}")
    for junk in out.glob(f".{MANIFEST_NAME}.*.tmp"):  # an atomic manifest write that was cut short
        junk.unlink(missing_ok=True)
    return done


def _finish_or_undo(tmp: Path, out: Path) -> str:
    """Apply ``tmp``'s journal (if any) against the manifest now in ``out``, then delete ``tmp``: if the
    manifest lists the new files the install committed (remove the old files), otherwise undo it
    (remove the new files it had moved in). Without a journal nothing had been moved yet."""
    what = "removed"
    try:
        journal = json.loads((tmp / JOURNAL).read_text())
        new, old = list(journal["new"]), list(journal["old"])
    except (OSError, ValueError, KeyError, TypeError):
        journal = None
    if journal is not None:
        listed = _owned(out)
        if new and set(new) <= listed:
            left, what = _remove(out, [f for f in old if f not in listed]), "install finished"
        else:
            left, what = _remove(out, [f for f in new if f not in listed]), "install undone"
        if left:
            return f"{what}, but {len(left)} file(s) could not be removed; kept the journal"
    shutil.rmtree(tmp, ignore_errors=True)
    return what


def pending_install_files(out: Path) -> set[str]:
    """File names that journals of unfinished installs mention (new or old): not strays."""
    names: set[str] = set()
    for j in out.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}/{JOURNAL}"):
        try:
            d = json.loads(j.read_text())
            names |= set(d.get("new", ())) | set(d.get("old", ()))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return names


def _remove(out: Path, names) -> list[str]:
    """Remove ``out/name`` for plain names inside ``out``, and the loaders' caches of the indexes among
    them (``shards.read.index.existing_caches``: beside the index and in the user's cache folder, which would
    otherwise outlive the set); the names that could not be removed."""
    left = []
    root = out.resolve()
    for f in names:
        p = out / f
        if root not in p.resolve().parents:  # a manifest never names files outside its folder
            continue
        caches = existing_caches(p) if p.suffix == ".idx" else []
        try:
            p.unlink(missing_ok=True)
        except OSError:
            left.append(f)
            continue
        for c in caches:
            try:
                c.unlink(missing_ok=True)
            except OSError:
                pass  # a stale cache is never used (it is stamped with the index's size and time)
    return left


def fsync_dir(d: Path) -> None:
    """Make ``d``'s entries (files moved in, the manifest replaced) durable; where a folder cannot be opened or
    synced (some file systems), nothing."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- errors ----------------------------------------------------------------------------------------


def describe_os_error(e: OSError, out: Path) -> str:
    """One line for an OSError met while packing: the path, what happened, what to do."""
    path = Path(e.filename) if e.filename else out
    try:
        inside_out = path.absolute() == out.absolute() or out.absolute() in path.absolute().parents
    except (OSError, ValueError):
        inside_out = True
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = ""
        try:
            free = f" ({shutil.disk_usage(_existing(out)).free / 2**20:,.0f} MB free)"
        except OSError:
            pass
        return (
            f"{out}: no space left on the device{free}; nothing was written: free some space or choose "
            "a --out on a larger disk"
        )
    if not inside_out:
        return f"{path}: {e.strerror or e} while reading the source; check that it exists and is readable"
    advice = {
        errno.EACCES: "permission denied; choose a --out you can write to, or fix the folder's permissions",
        errno.EPERM: "operation not permitted; choose a --out you can write to, or fix the folder's permissions",
        errno.EROFS: "read-only file system; choose a --out on a writable disk",
        errno.ENOTDIR: "a part of this path is a file, not a folder; choose another --out",
        errno.EEXIST: "exists and is in the way; choose another --out",
        errno.ENAMETOOLONG: "name too long; choose a shorter --out or --name",
    }.get(e.errno, f"{e.strerror or e}; check --out and try again")
    return f"{path}: {advice} (nothing was written)"


def _existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p
