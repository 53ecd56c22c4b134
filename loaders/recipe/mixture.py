"""The training mixture: shard sets and their weights, from ``--shards`` arguments.

Two spellings:

* ``--shards DIR[:WEIGHT]`` repeated (weight 1 when omitted), e.g.
  ``--shards data/cifar10-train:10 --shards data/edm-1m:1``;
* ``--shards mix.yaml`` (alone), a list of ``{path, weight, name?}``; relative paths are relative
  to the YAML file::

      - {path: cifar10-train, weight: 10}
      - {path: edm-1m, weight: 1, name: edm}

A source may also be a URL (``s3://bucket/prefix/set``, ``gs://…``, ``http(s)://…``, also as ``URL:WEIGHT`` and
as a YAML ``path:``; a YAML may give ``storage_options:`` beside ``sources:``): its set is staged into the
node-local cache (``shards.remote.stage``) and read from there; a URL is never taken for a local path.

Kind, counts, format and FID come from each directory's ``manifest.json``. Weight ``w`` means every
sample of that source appears ``w`` times per epoch (see ``loaders.batch.sampler``); weight 0 excludes it.
A mixture whose epoch could not be planned in the memory available (``DIR:1e6``) or overflows
(``DIR:1e308``) is refused when it is read, naming the source (:func:`check_epoch_size`, which the sampler
asks again for each epoch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.errors import ShardError, UserError
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.remote.options import RemoteOptions
from shards.remote.stage import local_set
from shards.remote.url import is_url, split_weight


@dataclass(frozen=True)
class MixtureSource:
    name: str
    path: Path
    manifest: Manifest
    weight: float
    weight_given: bool = True  # False when the user wrote no weight (1 by default; a policy may choose)
    url: str | None = None  # where the set came from when it is remote (``path`` is then its staged copy)

    @property
    def location(self) -> str:
        """What the user gave: the URL of a remote set, else its folder."""
        return self.url or str(self.path)

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def kind(self) -> str:
        return self.manifest.kind


@dataclass(frozen=True)
class Mixture:
    sources: tuple[MixtureSource, ...]

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.sources]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    @property
    def expected_epoch_size(self) -> float:
        return sum(s.weight * s.count for s in self.sources)

    def with_weights(self, weights) -> Mixture:
        """The same sources with new weights (how an inflation policy rewrites a mixture)."""
        weights = list(weights)
        if len(weights) != len(self.sources):
            raise ShardError(f"{len(weights)} weights for {len(self.sources)} sources")
        return _checked(
            Mixture(
                tuple(
                    MixtureSource(s.name, s.path, s.manifest, _check_weight(w, s.location), s.weight_given, s.url)
                    for s, w in zip(self.sources, weights)
                )
            )
        )

    def describe(self) -> list[dict]:
        return [
            {
                "name": s.name,
                "path": s.location,
                "kind": s.kind,
                "format": s.manifest.format,
                "count": s.count,
                "weight": s.weight,
                "fid": s.manifest.fid,
            }
            for s in self.sources
        ]


def parse_shards_args(args, remote: RemoteOptions | None = None) -> Mixture:
    """``["DIR[:W]", ...]`` or ``["mix.yaml"]`` → :class:`Mixture` (ShardError with one clear line otherwise).
    ``remote``: the cache and storage options for sources that are URLs (staged before the mixture is built)."""
    args = [str(a) for a in (args or [])]
    remote = remote or RemoteOptions()
    if not args:
        raise ShardError("no shards given; pass --shards DIR[:WEIGHT] (repeatable) or --shards mix.yaml")
    if len(args) == 1 and args[0].lower().endswith((".yaml", ".yml")) and not is_url(args[0]):
        entries, yaml_options = _read_yaml(Path(args[0]))
        remote = remote.with_storage_options(yaml_options)
    elif any(a.lower().endswith((".yaml", ".yml")) for a in args):
        raise ShardError("--shards mix.yaml must be the only --shards argument; list every source inside it")
    else:
        entries = [split_shards_arg(a) for a in args]
    sources = []
    for path, weight, name in entries:
        local = local_set(path, remote) if is_url(path) else Path(path)
        manifest = load_manifest(local)
        given = weight is not None
        url = path if is_url(path) else None
        sources.append(
            MixtureSource(name or manifest.name, local, manifest, 1.0 if weight is None else weight, given, url)
        )
    names = [s.name for s in sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ShardError(
            f"source name {sorted(dup)[0]!r} is used twice; give each source its own name "
            "(mix.yaml: name: ...) or use different shard sets"
        )
    if not any(s.weight > 0 and s.count > 0 for s in sources):
        raise ShardError("every source has weight 0; give at least one source a positive weight")
    return _checked(Mixture(tuple(sources)))


def load_manifest(path: str | Path, option: str = "--shards", remote: RemoteOptions | None = None) -> Manifest:
    """``Manifest.load(path)``, except that a path which is not a shard set at all (an image folder, an
    archive, a single tar) is refused with what it is and a pack command that writes somewhere else. A URL
    is staged first (``remote``: the cache and storage options) and its staged copy's manifest returned."""
    if is_url(str(path)):
        return Manifest.load(local_set(str(path), remote, option))
    p = Path(path)
    if not (p / MANIFEST_NAME).is_file():
        hint = not_a_shard_set(p, option)
        if hint:
            raise ShardError(hint)
    return Manifest.load(p)


def not_a_shard_set(p: Path, option: str = "--shards") -> str | None:
    """One line for ``option p`` when ``p`` exists but is not a shard set: what it is and the way on. A folder
    that holds shard sets: name them and the ``option`` each would take; one shard ``.tar`` of a set: its
    folder; images (a folder, an ImageFolder tree, an archive): the ``shards pack`` command that packs them
    into a folder of its own (never into ``p``); a folder with neither images nor shard sets: say so. None
    when there is nothing better to say than ``Manifest.load``'s (missing path, empty folder)."""
    archives = (".tar.gz", ".tgz", ".tar")
    name = p.name.lower()
    if p.is_file():
        if name.endswith(".tar") and (p.parent / MANIFEST_NAME).is_file():
            return (
                f"{option} {p}: one shard of the shard set {p.parent}, not a shard set itself; give the set's "
                f"folder: {option} {p.parent}"
            )
        if name.endswith((".tar.gz", ".tgz")):
            what = "a compressed tar archive"
        elif name.endswith(".tar"):
            what = "a single .tar file"
        elif name.endswith((".npz", ".npy")):
            what = "a numpy array file"
        else:
            what = "a file"
        stem = next((p.name[: -len(a)] for a in archives if name.endswith(a)), p.stem)
    elif p.is_dir():
        sets = shard_sets_in(p)
        if sets:
            more = f" (and {len(sets) - 4} more)" if len(sets) > 4 else ""
            flags = " ".join(f"{_option_for(p / child, option)} {p / child}" for child in sets[:4])
            return (
                f"{option} {p}: a folder that holds shard sets ({', '.join(sets[:4])}{more}), not a shard set "
                f"itself; give the ones you want, one flag each: {flags}"
            )
        what = _describe_folder(p)
        if what is None:
            return None
        if what.startswith(NO_IMAGES):
            return (
                f"{option} {p}: {what}; give a shard set (a folder with {MANIFEST_NAME}, written by `python -m "
                f"shards pack`), or pack a folder of images into one first"
            )
        stem = p.resolve().name
    else:
        return None
    out = Path("data") / stem  # as the README's commands: a folder of its own, never inside the images
    inside = out.resolve() == p.resolve() or p.resolve() in out.resolve().parents
    if inside or out.exists():
        out = Path("data") / f"{stem}-shards"
    return (
        f"{option} {p}: {what}, not a shard set (a folder with {MANIFEST_NAME}, written by `python -m shards "
        f"pack`); pack it into a folder of its own first: `python -m shards pack {p} --out {out}` (add --kind "
        f"generated for generator output; pack names the folders inside when --subdir is needed), then "
        f"{option} {out}"
    )


NO_IMAGES = "a folder of neither images nor shard sets"


def shard_sets_in(p: Path, peek: int = 200) -> list[str]:
    """The names of ``p``'s sub-folders that are shard sets (hold a manifest), from its first ``peek`` entries."""
    try:
        entries = sorted((e for _, e in zip(range(peek), os.scandir(p))), key=lambda e: e.name)
    except OSError:
        return []
    return [e.name for e in entries if e.is_dir() and (Path(e.path) / MANIFEST_NAME).is_file()]


def _option_for(directory: Path, option: str) -> str:
    """``--eval-shards`` for a test split when the user is choosing training data, else ``option``."""
    if option != "--shards":
        return option
    try:
        split = Manifest.load(directory).split
    except UserError:
        return option
    return "--eval-shards" if split == "test" else option


def _holds_images(d: str, peek: int) -> bool:
    """Whether folder ``d`` has an image among its first ``peek`` entries."""
    from shards.packing.sources import IMAGE_FILE_EXTS

    try:
        return any(e.name.lower().endswith(IMAGE_FILE_EXTS) for _, e in zip(range(peek), os.scandir(d)))
    except OSError:
        return False


def _sub_folders(d: str, peek: int) -> list[os.DirEntry]:
    try:
        return [e for _, e in zip(range(peek), os.scandir(d)) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def _listed(dirs: list[os.DirEntry]) -> str:
    return f"{', '.join(d.name for d in dirs[:4])}{', …' if len(dirs) > 4 else ''}"


def _describe_folder(p: Path, peek: int = 200) -> str | None:
    """What a folder without a manifest holds, from a look at its first entries two levels down (never a full
    walk): images, an ImageFolder tree, tars, folders of those (a tree pack takes with --subdir), or none."""
    from shards.packing.sources import IMAGE_FILE_EXTS

    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError:
        return None
    entries = [e for e in entries if not e.name.startswith(".")]
    if not entries:
        return None
    files = [e.name for e in entries if e.is_file()]
    dirs = [e for e in entries if e.is_dir()]
    images = [f for f in files if f.lower().endswith(IMAGE_FILE_EXTS)]
    tars = [f for f in files if f.lower().endswith((".tar", ".tar.gz", ".tgz"))]
    if images:
        return f"a folder of images ({images[0]}, …)"
    if tars:
        return f"a folder of tar files without {MANIFEST_NAME} ({', '.join(tars[:3])}{', …' if len(tars) > 3 else ''})"
    with_images = [d.name for d in dirs[:peek] if _holds_images(d.path, peek)]
    if with_images and len(with_images) * 2 < min(len(dirs), peek):  # a project's checkout, not a class tree
        return f"{NO_IMAGES} (of its folders {_listed(dirs)}, only {', '.join(with_images[:3])} holds images)"
    if with_images:
        names = ", ".join(with_images[:4]) + (", …" if len(dirs) > 4 else "")
        return f"an ImageFolder tree of images (class folders {names})"
    listed = _listed(dirs)
    deeper = any(_holds_images(g.path, peek) for d in dirs[:peek] for g in _sub_folders(d.path, peek))
    if deeper:  # e.g. cifar10/{train,test}/<class>/*.jpg: pack names the folder to give with --subdir
        return f"a folder of image trees ({listed})"
    if dirs:
        return f"{NO_IMAGES} (its folders {listed} hold no images)"
    return f"{NO_IMAGES} ({', '.join(files[:3])}{', …' if len(files) > 3 else ''})"


def _checked(m: Mixture) -> Mixture:
    """Refuse (one line, naming the source) a mixture whose epoch overflows or cannot be planned in memory."""
    check_epoch_size(m.counts, m.weights, [f"source {s.name!r} ({s.location})" for s in m.sources])
    return m


def split_shards_arg(arg: str) -> tuple[str, float | None, None]:
    """``DIR[:W]`` or ``URL[:W]`` → (DIR, W or None when no weight was written, None)."""
    if is_url(arg):
        path, weight = split_weight(arg)
        sep, weight = (":", weight) if weight is not None else ("", "")
    else:
        path, sep, weight = arg.rpartition(":")
    if not sep or "/" in weight or not weight:
        return arg, None, None
    try:
        w = float(weight)
    except ValueError:
        if Path(arg).exists():
            return arg, None, None
        raise ShardError(
            f"--shards {arg}: weight {weight!r} is not a number; write DIR:WEIGHT, e.g. {path}:10"
        ) from None
    return path, _check_weight(w, f"--shards {arg}"), None


def _check_weight(w, where: str) -> float:
    if isinstance(w, bool):  # float(True) is 1.0: a YAML `weight: true` is a mistake, not a weight
        raise ShardError(f"{where}: weight {w!r} is not a number; use a number >= 0 (e.g. 10, 1, 0.5)")
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ShardError(f"{where}: weight {w!r} is not a number; use a number >= 0 (e.g. 10, 1, 0.5)") from None
    if not math.isfinite(w) or w < 0:
        raise ShardError(f"{where}: weight {w} is invalid; use a finite number >= 0 (0 excludes the source)")
    return w


def _read_yaml(path: Path) -> tuple[list[tuple[str, float | None, str | None]], dict]:
    """The YAML's entries and its ``storage_options:`` (empty when it gives none)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ShardError(f"{path}: cannot read mixture file ({e.strerror}); check the path") from None
    except yaml.YAMLError as e:
        raise ShardError(
            f"{path}: not valid YAML ({str(e).splitlines()[0]}); write a list of {{path: DIR, weight: W, name: NAME}}"
        ) from None
    options = {}
    if isinstance(doc, dict) and "sources" in doc:
        unknown = set(doc) - {"sources", "storage_options"}
        if unknown:
            raise ShardError(f"{path}: unknown key {sorted(unknown)[0]!r}; a mixture has sources and storage_options")
        options = doc.get("storage_options") or {}
        if not isinstance(options, dict):
            raise ShardError(f"{path}: storage_options must be a mapping of KEY: VALUE (fsspec's storage options)")
        doc = doc["sources"]
    if not isinstance(doc, list) or not doc:
        raise ShardError(f"{path}: expected a non-empty list of {{path: DIR, weight: W, name: NAME}} entries")
    entries = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or "path" not in item:
            raise ShardError(f"{path}: entry {i + 1} needs a 'path' (and optionally 'weight', 'name')")
        unknown = set(item) - {"path", "weight", "name"}
        if unknown:
            raise ShardError(f"{path}: entry {i + 1} has unknown key {sorted(unknown)[0]!r}; use path, weight, name")
        for key in ("path", "name"):
            if (key == "path" or item.get(key) is not None) and not isinstance(item[key], str):
                raise ShardError(
                    f"{path}: entry {i + 1} has {key} {item[key]!r} ({type(item[key]).__name__}); "
                    f'write it as a string, quoted if it looks like a number: {key}: "{item[key]}"'
                )
        weight = item.get("weight")
        if "weight" in item and not (isinstance(weight, (int, float)) and not isinstance(weight, bool)):
            raise ShardError(f"{path}: entry {i + 1} has weight {weight!r}; write a number >= 0 (e.g. weight: 10)")
        w = _check_weight(weight, f"{path}: entry {i + 1}") if "weight" in item else None
        if is_url(item["path"]):  # a URL is never relative to the YAML's folder
            entries.append((item["path"], w, item.get("name")))
            continue
        p = Path(item["path"]).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        entries.append((str(p), w, item.get("name")))
    return entries, options


# -- the memory bound of an epoch's plan (loaders.batch.sampler's docstring, "Memory bound") ----------------
PLAN_BYTES_PER_SAMPLE = 48  # peak of plan_epoch per planned sample (tracemalloc: 44-48 B)
PLAN_MEMORY_SHARE = 0.5  # of the memory available now; the rest is for the model, DALI and the OS


def max_epoch_samples(available_bytes: int | None = None) -> int:
    """The most samples one epoch may plan here: ``PLAN_MEMORY_SHARE`` of the available memory
    (``psutil.virtual_memory().available`` unless given) at ``PLAN_BYTES_PER_SAMPLE`` each."""
    if available_bytes is None:
        available_bytes = memory_bytes("available")
    return int(available_bytes * PLAN_MEMORY_SHARE // PLAN_BYTES_PER_SAMPLE)


def memory_bytes(which: str) -> int:
    """``psutil.virtual_memory()``'s ``available`` or ``total`` bytes."""
    import psutil

    return int(getattr(psutil.virtual_memory(), which))


def check_epoch_size(counts, weights, names: Sequence[str] | None = None, available_bytes: int | None = None) -> float:
    """The expected epoch size ``Σ w·n``, or a one-line ShardError naming the source whose weight makes
    the epoch overflow or outgrow the memory that can plan it (see the module docstring)."""
    n = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if n.shape != w.shape:
        raise ShardError(f"{len(n)} source counts but {len(w)} weights")
    names = list(names) if names is not None else [f"source {i}" for i in range(len(n))]
    if (w < 0).any() or np.isnan(w).any():
        i = int(np.flatnonzero((w < 0) | np.isnan(w))[0])
        raise ShardError(f"{names[i]}: weight {w[i]:g} is invalid; use a finite number >= 0 (0 excludes the source)")
    with np.errstate(over="ignore", invalid="ignore"):
        planned = w * n
        total = float(planned.sum())
    if not np.isfinite(total):
        finite = np.isfinite(planned)
        i = int(np.argmin(finite)) if not finite.all() else int(np.argmax(planned))
        raise ShardError(
            f"{names[i]}: weight {w[i]:g} × {int(n[i]):,} samples overflows the epoch size; "
            "a weight is how many times each sample appears per epoch (e.g. 10)"
        )
    if available_bytes is None:
        available_bytes = memory_bytes("available")
    limit = max_epoch_samples(available_bytes)
    if total > limit:
        i = int(np.argmax(planned))
        share = f"{PLAN_MEMORY_SHARE:.0%} of {_gib(available_bytes)} of memory"
        raise ShardError(
            f"{names[i]}: weight {w[i]:g} × {int(n[i]):,} samples makes an epoch of {total:,.0f} samples; "
            f"at most {limit:,} can be planned here ({PLAN_BYTES_PER_SAMPLE} B each in {share}); "
            "lower the weight (it is how many times each sample appears per epoch, e.g. 10)"
        )
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"
