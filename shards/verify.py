"""``shards verify`` and ``shards info``: re-read shard sets and report on them.

``verify_dir`` re-reads every shard of a set: the tar structure (regular USTAR members grouped by
key, each sample with ``cls``, ``json`` and the image), the DALI index against the tar, every image judged
by the loaders' own check (``shards.read.check``: structure, decode, size against the manifest's), labels in the
set's range, each sample's ``.json`` record (its label and image sha256 since manifest version 2), keys
unique across the whole set, no tar listed twice, and counts, label counts, bytes and sha256 against the
manifest (whose fields ``Manifest.load`` has checked). It returns one line per problem (empty: all good).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from shards.base.errors import ShardError
from shards.base.host import cores
from shards.base.interrupt import fork_context, start_pool, stop_pool
from shards.format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from shards.format.schema import PIXEL_MEMBER_EXTS
from shards.read.check import OK, WHY, check_image, check_meta, labels_in_range, parse_label, sizes_match
from shards.read.index import read_index


def verify_dir(directory: str | os.PathLike, workers: int = 0, decode: bool = True) -> list[str]:
    directory = Path(directory)
    try:
        m = Manifest.load(directory)
    except ShardError as e:
        return [str(e)]
    problems: list[str] = []
    # files an unfinished install mentions (a pack running now, or one that was killed: the next
    # pack finishes or undoes it) are accounted for, not strays
    from shards.packing.pack import pending_install_files

    listed = m.files | {MANIFEST_NAME} | pending_install_files(directory)
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix in (".tar", ".idx") and p.name not in listed:
            problems.append(f"{p}: not listed in {MANIFEST_NAME}; remove it or re-pack")
    if not m.standin:
        problems += _repeated_tars(directory, m)
    jobs = [(str(directory), s, m, decode) for s in m.shards]
    workers = min(workers or cores(), len(jobs))
    if workers > 1:
        pool = start_pool(fork_context(), workers)
        try:
            results = pool.starmap(verify_shard, jobs)
        except BaseException:  # interrupted, or a shard that could not be read at all
            stop_pool(pool)
            raise
        pool.close()
        pool.join()
    else:
        results = [verify_shard(*j) for j in jobs]
    labels: Counter = Counter()
    total = 0
    where: dict[str, str] = {}
    repeated: list[str] = []
    for s, (shard_problems, n, lab, keys) in zip(m.shards, results):
        problems += shard_problems
        total += n
        labels.update(lab)
        for k in keys:
            if k in where and not m.standin:
                repeated.append(f"{directory / s.file}: sample key {k!r} is also in {where[k]}")
            where.setdefault(k, s.file)
    if repeated:
        more = f" ({len(repeated) - 1} more repeated keys)" if len(repeated) > 1 else ""
        problems.append(f"{repeated[0]}; keys must be unique across a shard set{more}: re-pack the set")
    if total != m.count:
        problems.append(f"{directory / MANIFEST_NAME}: manifest says {m.count} samples, shards hold {total}")
    if total == m.count and m.label_counts and dict(labels) != {k: v for k, v in m.label_counts.items() if v}:
        problems.append(
            f"{directory / MANIFEST_NAME}: label counts differ from the shards "
            f"(manifest {m.label_counts}, shards {dict(sorted(labels.items(), key=lambda kv: int(kv[0])))})"
        )
    return problems


def _repeated_tars(directory: Path, m: Manifest) -> list[str]:
    """Shards of the manifest that are one file (symbolic links to one tar): its samples would come twice."""
    seen: dict[str, str] = {}
    out = []
    for s in m.shards:
        real = os.path.realpath(directory / s.file)
        if real in seen:
            out.append(f"{directory / s.file}: is the same file as {seen[real]}; a shard set lists each tar once")
        seen.setdefault(real, s.file)
    return out


def verify_shard(
    directory: str, s: ShardInfo, m: Manifest, decode: bool = True
) -> tuple[list[str], int, Counter, list[str]]:
    """Problems found in one tar and its index, its sample count, label counts and keys."""
    path = Path(directory) / s.file
    try:
        return _verify_shard(path, Path(directory) / s.index, s, m, decode)
    except OSError as e:
        return [f"{path}: cannot be read ({e.strerror or e}); check it or re-pack the set"], 0, Counter(), []


def _verify_shard(path: Path, idx_path: Path, s: ShardInfo, m: Manifest, decode: bool):
    if not path.is_file():
        return [f"{path}: missing (listed in {MANIFEST_NAME}); re-pack the set"], 0, Counter(), []
    problems = []
    data = path.read_bytes()
    if len(data) != s.bytes:
        problems.append(f"{path}: {len(data)} bytes, manifest says {s.bytes} (truncated or changed); re-pack the set")
    elif hashlib.sha256(data).hexdigest().lower() != s.sha256.lower():
        problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupt); re-pack the set")
    tar_intact = not problems
    if not data:
        return problems + [f"{path}: empty file, not a tar"], 0, Counter(), []
    try:
        samples = _read_tar(data)
    except (tarfile.TarError, ValueError, EOFError) as e:
        return problems + [f"{path}: broken tar ({e})"], 0, Counter(), []
    if m.standin:  # a stand-in may use a prefix of a tar, through its index
        samples = samples[: s.count]
    problems += _check_index(idx_path, samples, path if tar_intact else None)
    labels: Counter = Counter()
    ext = m.ext
    for key, members in samples:
        exts = [e for e, _, _ in members]
        want = {"cls", "json", ext}
        if set(exts) != want or len(exts) != len(want):
            problems.append(f"{path}: sample {key} has members {sorted(exts)}, want {sorted(want)}")
            continue
        blob = {e: data[off : off + size] for e, off, size in members}
        label = parse_label(blob["cls"])
        if label is None:
            problems.append(f"{path}: sample {key}.cls is {blob['cls'][:20]!r}, not an integer")
            continue
        if not labels_in_range(np.array([label]), m)[0]:
            problems.append(f"{path}: sample {key} has label {label}, outside the manifest's {m.num_classes} classes")
        labels[str(label)] += 1
        verdict = check_meta(blob["json"], label, blob[ext], m.name, m.kind, m.digests)
        if verdict != OK:
            problems.append(f"{path}: sample {key} {WHY[verdict]}")
        if decode or ext in PIXEL_MEMBER_EXTS:
            err = _image_problem(blob[ext], ext, m)
            if err:
                problems.append(f"{path}: sample {key}.{ext} {err}")
    if len(samples) != s.count:
        problems.append(f"{path}: holds {len(samples)} samples, manifest says {s.count}")
    return problems, len(samples), labels, [k for k, _ in samples]


def _read_tar(data: bytes) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Samples as (key, [(ext, data_offset, size), ...]) in tar order, grouped like webdataset does."""
    samples: list = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            if not info.isfile():
                raise ValueError(f"member {info.name!r} is not a regular file")
            folder, _, base = info.name.rpartition("/")
            stem, dot, ext = base.partition(".")  # webdataset: the key ends at the first dot
            if not dot:
                raise ValueError(f"member {info.name!r} has no extension")
            key = f"{folder}/{stem}" if folder else stem
            if info.offset_data + info.size > len(data):
                raise ValueError(f"member {info.name!r} runs past the end of the file")
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
            samples[-1][1].append((ext, info.offset_data, info.size))
    keys = [k for k, _ in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears in two places (members of one sample must be adjacent)")
    return samples


def _check_index(idx_path: Path, samples, intact_tar: Path | None) -> list[str]:
    """Problems of the index against the tar. ``intact_tar``: the tar, when it matches the manifest's
    size and sha256; only then is the index the stale part, and rebuilding it (``wds2idx``) the fix.
    When the tar itself changed, the index disagreeing is a symptom: re-packing is the fix."""
    fix = (
        f"the tar matches its sha256, so the index is stale; re-create it with `wds2idx` ({intact_tar.name})"
        if intact_tar
        else "the tar does not match the manifest either (see above); re-pack the set"
    )
    try:
        idx = read_index(idx_path)
    except ShardError as e:
        return [f"{str(e).split('; ')[0]}; {fix}"]
    if len(idx) != len(samples):
        return [f"{idx_path}: index lists {len(idx)} samples, tar holds {len(samples)}; {fix}"]
    for i, (key, members) in enumerate(samples):
        if idx.keys[i] != key:
            return [f"{idx_path}: sample {i} is {str(idx.keys[i])!r} in the index, {key!r} in the tar; {fix}"]
        for ext, off, size in members:
            if ext not in idx.offsets or idx.offsets[ext][i] != off or idx.sizes[ext][i] != size:
                got = (int(idx.offsets[ext][i]), int(idx.sizes[ext][i])) if ext in idx.offsets else None
                return [
                    f"{idx_path}: {key}.{ext} at (offset, size) {got} in the index, {(off, size)} in the tar; {fix}"
                ]
    return []


def _image_problem(blob: bytes, ext: str, m: Manifest) -> str | None:
    """What is wrong with one image member (``shards.read.check.check_image``, the loaders' check), or None."""
    verdict, h, w = check_image(blob, ext)
    if verdict != OK:
        return WHY[verdict]
    if ext == "raw":
        h, w = m.image_size
        return None if len(blob) == h * w * 3 else f"has {len(blob)} bytes, want {h}×{w}×3 = {h * w * 3}"
    if not sizes_match(np.array([h, w]), m)[0]:
        return f"is {h}×{w}, manifest says {m.image_size[0]}×{m.image_size[1]}"
    return None


# -- info ------------------------------------------------------------------------------------------

INFO_COLUMNS = [
    "name",
    "kind",
    "split",
    "count",
    "shards",
    "format",
    "encoding",
    "size",
    "classes",
    "bytes",
    "fid",
    "skipped",
    "path",
]


def describe_encoding(m: Manifest) -> str | None:
    """One word for ``shards info``: ``passthrough`` (every image as it came), ``lossless`` (some stored in
    a new encoding with exactly their pixels), ``lossy:N`` (N images JPEG-encoded by pack), None (the
    manifest predates the record)."""
    e = m.encoding
    if e is None:
        return None
    if e.get("lossy_reencoded"):
        return f"lossy:{e['lossy_reencoded']}"
    if e.get("passthrough") == m.count:
        return "passthrough"
    return "lossless"


def info_rows(dirs, storage_options: dict | None = None) -> list[dict]:
    """One row per set; a URL's manifest is read remotely (nothing staged)."""
    from shards.remote.fs import read_manifest
    from shards.remote.url import is_url

    rows = []
    for d in dirs:
        m = read_manifest(d, storage_options)[0] if is_url(str(d)) else Manifest.load(d)
        rows.append(
            {
                "name": m.name,
                "kind": m.kind,
                "split": m.split,
                "count": m.count,
                "shards": len(m.shards),
                "format": m.format,
                "encoding": describe_encoding(m),
                "size": "×".join(map(str, m.image_size)) if m.image_size else "mixed",
                "classes": len(m.classes),
                "bytes": _human(sum(s.bytes for s in m.shards)),
                "fid": None if m.fid is None else f"{m.fid:g}",
                "skipped": len(m.skipped),
                "path": str(d),
            }
        )
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
