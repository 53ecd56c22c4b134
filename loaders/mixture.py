"""The training mixture: shard sets and their weights, from ``--shards`` arguments.

Two spellings:

* ``--shards DIR[:WEIGHT]`` repeated (weight 1 when omitted), e.g.
  ``--shards data/cifar10-train:10 --shards data/edm-1m:1``;
* ``--shards mix.yaml`` (alone), a list of ``{path, weight, name?}``; relative paths are relative
  to the YAML file::

      - {path: cifar10-train, weight: 10}
      - {path: edm-1m, weight: 1, name: edm}

Kind, counts, format and FID come from each directory's ``manifest.json``. Weight ``w`` means every
sample of that source appears ``w`` times per epoch (see ``loaders.sampler``); weight 0 excludes it.
A mixture whose epoch could not be planned in the memory available (``DIR:1e6``) or overflows
(``DIR:1e308``) is refused when it is read, naming the source (``loaders.sampler.check_epoch_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from shards.manifest import Manifest, ShardError

from .sampler import check_epoch_size


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    manifest: Manifest
    weight: float
    weight_given: bool = True  # False when the user wrote no weight (1 by default; a policy may choose)

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def kind(self) -> str:
        return self.manifest.kind


@dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]

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
                    Source(s.name, s.path, s.manifest, _check_weight(w, str(s.path)), s.weight_given)
                    for s, w in zip(self.sources, weights)
                )
            )
        )

    def describe(self) -> list[dict]:
        return [
            {
                "name": s.name,
                "path": str(s.path),
                "kind": s.kind,
                "format": s.manifest.format,
                "count": s.count,
                "weight": s.weight,
                "fid": s.manifest.fid,
            }
            for s in self.sources
        ]


def parse_shards_args(args) -> Mixture:
    """``["DIR[:W]", ...]`` or ``["mix.yaml"]`` → :class:`Mixture` (ShardError with one clear line otherwise)."""
    args = [str(a) for a in (args or [])]
    if not args:
        raise ShardError("no shards given; pass --shards DIR[:WEIGHT] (repeatable) or --shards mix.yaml")
    if len(args) == 1 and args[0].lower().endswith((".yaml", ".yml")):
        entries = _read_yaml(Path(args[0]))
    elif any(a.lower().endswith((".yaml", ".yml")) for a in args):
        raise ShardError("--shards mix.yaml must be the only --shards argument; list every source inside it")
    else:
        entries = [_split_arg(a) for a in args]
    sources = []
    for path, weight, name in entries:
        manifest = Manifest.load(path)
        given = weight is not None
        sources.append(Source(name or manifest.name, Path(path), manifest, 1.0 if weight is None else weight, given))
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


def _checked(m: Mixture) -> Mixture:
    """Refuse (one line, naming the source) a mixture whose epoch overflows or cannot be planned in memory."""
    check_epoch_size(m.counts, m.weights, [f"source {s.name!r} ({s.path})" for s in m.sources])
    return m


def _split_arg(arg: str) -> tuple[str, float | None, None]:
    """``DIR[:W]`` → (DIR, W or None when no weight was written, None)."""
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


def _read_yaml(path: Path) -> list[tuple[str, float | None, str | None]]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ShardError(f"{path}: cannot read mixture file ({e.strerror}); check the path") from None
    except yaml.YAMLError as e:
        raise ShardError(
            f"{path}: not valid YAML ({str(e).splitlines()[0]}); write a list of {{path: DIR, weight: W, name: NAME}}"
        ) from None
    if isinstance(doc, dict) and "sources" in doc:
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
        p = Path(item["path"]).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        w = _check_weight(weight, f"{path}: entry {i + 1}") if "weight" in item else None
        entries.append((str(p), w, item.get("name")))
    return entries
