"""The data side of a run: shards → mixture + inflation policy → recipe → the DALI loaders.

``plan_data`` checks every input before any work starts (missing or empty shard sets, unlabelled
evaluation sets, a batch that does not split over the ranks or exceeds an epoch) and resolves the
recipe (``loaders.recipe.resolve.resolve_recipe``: weights and augmentation from the inflation policy, the
method's augmentation family, explicit flags). ``DataPlan.train_loader`` / ``eval_loader`` build the
loaders the run uses; evaluation loaders are built at start-up, so a damaged evaluation set is found
before hours of training, not after.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from loaders.recipe.mixture import Mixture, load_manifest, parse_shards_args
from loaders.recipe.policy import AUG_KNOBS
from loaders.recipe.resolve import Recipe, resolve_recipe
from shards.base.errors import ConfigError
from shards.format.manifest import Manifest
from shards.remote.options import RemoteOptions
from shards.remote.stage import local_set


def remote_options(settings) -> RemoteOptions:
    """Where and how the run stages remote shard sets (``--cache-dir``, ``--storage-option``, ``--on-corrupt``)."""
    return RemoteOptions.from_cli(
        getattr(settings, "cache_dir", None),
        getattr(settings, "storage_option", ()),
        on_corrupt=getattr(settings, "on_corrupt", "error"),
        progress=getattr(settings, "progress", True),
    )


@dataclass(frozen=True)
class DataPlan:
    """What the settings resolve to before touching a device."""

    mixture: Mixture | None  # with the weights the run uses (None for evaluation only)
    recipe: Recipe | None
    train_labels: tuple[str, ...]  # labelled real sets giving kNN / linear-probe training features
    eval_shards: tuple[str, ...]  # labelled test sets
    num_classes: int

    @property
    def aug(self):
        return self.recipe.aug

    @property
    def decision(self):
        return self.recipe.decision

    @property
    def epoch_size(self) -> int:
        return int(round(self.mixture.expected_epoch_size))

    def sources(self) -> list[dict]:
        """Each source as the run saw it, with the digest a resume compares (see ``check_sources``)."""
        return [
            {**d, "digest": manifest_digest(src.manifest)}
            for d, src in zip(self.mixture.describe(), self.mixture.sources)
        ]

    def reading_line(self) -> str:
        """Said before the training loader opens its shard sets: how many, and whether their index caches are
        built now (the first time a set is read: parsing every index, a while for large sets)."""
        from shards.read.index import existing_caches

        sources = self.mixture.sources
        indexes = [src.path / info.index for src in sources for info in src.manifest.shards]
        missing = sum(1 for path in indexes if not existing_caches(path))
        first = f" (first time: building {missing} of {len(indexes)} index caches)" if missing else ""
        samples = sum(src.manifest.count for src in sources)
        return f"reading {len(sources)} shard sets, {samples:,} samples{first}…"

    def train_loader(self, settings, runtime):
        from loaders.batch.loader import TrainLoader

        return TrainLoader(
            self.mixture,
            self.aug,
            settings.batch_size,  # the global batch: each rank delivers its part of it (elastic determinism)
            seed=settings.seed,
            device=runtime.device,
            rank=runtime.rank,
            world_size=runtime.world_size,
            num_threads=settings.num_threads,
            channels_last=runtime.is_cuda and settings.channels_last,
            drop_last=True,
            on_corrupt=settings.on_corrupt,
            loader_device=settings.loader_device,
            # the loader's colour stage compiles when the step does
            compile={"auto": None, "off": False}.get(settings.compile, True),
        )

    def eval_loader(self, dirs, settings, runtime, limit: int):
        from loaders.batch.loader import EvalLoader

        # a fixed random subset when capped: test sets are often packed in class order
        remote = remote_options(settings)
        return EvalLoader(
            [local_set(d, remote, "--eval-shards") for d in dirs],  # a URL: its staged copy
            settings.eval_batch_size,
            runtime.device,
            size=settings.image_size,
            num_threads=settings.num_threads,
            limit=limit,
            on_corrupt=settings.on_corrupt,
            loader_device=settings.loader_device,
        )


def manifest_digest(m: Manifest) -> str:
    """A short digest of a shard set's content (its shards' sha256 and counts, in order)."""
    h = hashlib.sha256()
    for info in m.shards:
        h.update(f"{info.file} {info.count} {info.sha256}\n".encode())
    return h.hexdigest()[:16]


def plan_data(settings, world_size: int, aug_family: str) -> DataPlan:
    """Resolve and check the run's data (ShardError / ConfigError, one line, before any work starts);
    ``aug_family``: the method's augmentation family (its no-inflation and AdaInf presets)."""
    if not settings.shards:
        raise ConfigError("no training data: give --shards DIR[:WEIGHT] (repeatable) or --demo")
    mixture = parse_shards_args(list(settings.shards), remote_options(settings))
    for src in mixture.sources:
        if src.manifest.count == 0:
            raise ConfigError(f"{src.location}: shard set is empty; pack images into it with `python -m shards pack`")
    label_dirs = settings.train_labels or tuple(
        src.location for src in mixture.sources if src.manifest.kind == "real" and src.manifest.labelled
    )
    eval_plan = plan_eval(settings.eval_shards, label_dirs, required=False, remote=remote_options(settings))
    if settings.eval_shards and not label_dirs:
        raise ConfigError(
            "evaluation needs labelled training features: give --train-labels DIR (a labelled real shard set)"
        )
    try:
        recipe = resolve_recipe(
            mixture,
            family=aug_family,
            aug=settings.aug,
            inflation=settings.inflation,
            overrides={k: getattr(settings, k) for k in AUG_KNOBS},
            size=settings.image_size,
        )
    except ValueError as e:  # a mixture the policy cannot serve, a knob out of range: one line
        raise ConfigError(str(e)) from None
    epoch_size = int(round(recipe.mixture.expected_epoch_size))
    if settings.batch_size % world_size:
        raise ConfigError(
            f"--batch-size {settings.batch_size} does not split over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    if settings.batch_size > epoch_size:
        raise ConfigError(
            f"--batch-size {settings.batch_size} is larger than an epoch of the mixture "
            f"({epoch_size} samples); lower --batch-size or add data"
        )
    classes = max([eval_plan.num_classes] + [src.manifest.num_classes for src in mixture.sources])
    return DataPlan(recipe.mixture, recipe, eval_plan.train_labels, eval_plan.eval_shards, classes)


def data_notes(plan: DataPlan, settings) -> list[str]:
    """Lines a user should read before the run starts: evaluation that will not happen, real sources
    without labels (often generator output packed without ``--kind generated``)."""
    notes = []
    if not plan.eval_shards:
        ignored = [
            f"--{k.replace('_', '-')} {getattr(settings, k)}"
            for k in ("probe_epochs", "eval_every")
            if getattr(settings, k)
        ]
        notes.append(
            "no --eval-shards: no accuracy will be measured (no kNN monitor, no final evaluation"
            + (f"; {' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored" if ignored else "")
            + "); the online probe still trains on the training views. Give --eval-shards DIR, a labelled "
            "test set (`python -m shards pack SRC --split test --out DIR`), to measure it"
        )
    unlabelled = [src for src in plan.mixture.sources if src.kind == "real" and not src.manifest.labelled]
    generated = any(src.kind == "generated" and src.weight > 0 for src in plan.mixture.sources)
    for src in unlabelled:
        consequence = (
            "; with no generated source the AdaInf policy uses the no-inflation recipe"
            if not generated and plan.decision is not None and plan.decision.mode == "adainf"
            else ""
        )
        notes.append(
            f"warning: source {src.name!r} ({src.path}) is kind real but has no labels: it is weighted as real "
            f"data{consequence}. If it is generator output, re-pack it with `python -m shards pack ... --kind "
            "generated --overwrite`"
        )
    return notes


def plan_eval(eval_shards, train_labels, required: bool = True, remote: RemoteOptions | None = None) -> DataPlan:
    """The evaluation sets alone (``--eval-only``, the random-init baseline): labelled, readable. ``remote``:
    how URLs among them are staged (``remote_options(settings)``)."""
    if required and not eval_shards:
        raise ConfigError("no evaluation data: give --eval-shards DIR (a labelled test shard set)")
    if required and not train_labels:
        raise ConfigError("no labelled training features: give --train-labels DIR")
    classes = [10]
    for opt, dirs in (("--eval-shards", eval_shards), ("--train-labels", train_labels)):
        for d in dirs:
            m = load_manifest(d, opt, remote)
            if not m.labelled:
                raise ConfigError(f"{opt} {d}: shard set has no labels ({m.kind}); give a labelled real set")
            classes.append(m.num_classes)  # class names, or the labels a set without names uses
    return DataPlan(None, None, tuple(map(str, train_labels)), tuple(map(str, eval_shards)), max(classes))


def check_sources(saved: list[dict], now: list[dict], allow_change: bool) -> list[str]:
    """Differences between the sources a checkpoint trained on and the sources found now (count, content
    digest, weight), as lines; a ConfigError unless ``allow_change`` (then the lines are warnings)."""
    if not saved:  # a checkpoint from before digests were recorded
        return []
    old = {d["name"]: d for d in saved}
    lines = []
    for d in now:
        o = old.pop(d["name"], None)
        if o is None:
            lines.append(f"source {d['name']!r} ({d['path']}) is new")
            continue
        for key in ("count", "digest", "weight"):
            if o.get(key) is not None and o.get(key) != d.get(key):
                what = {"digest": "content"}.get(key, key)
                lines.append(f"source {d['name']!r} ({d['path']}): {what} {o[key]} at the checkpoint, {d[key]} now")
    lines += [f"source {n!r} ({o['path']}) is gone" for n, o in old.items()]
    if lines and not allow_change:
        raise ConfigError(
            f"--resume: the data changed since the checkpoint ({lines[0]}"
            f"{f'; {len(lines) - 1} more' if len(lines) > 1 else ''}); restore it, start a new run, "
            f"or pass --allow-data-change to continue with a new epoch plan"
        )
    return lines


def describe_resolved(plan: DataPlan) -> dict[str, Any]:
    """The data part of a run's ``resolved`` record (config.yaml and every checkpoint)."""
    return {
        "inflation": plan.decision.to_dict() if plan.decision else None,
        "augmentation": plan.aug.to_dict(),
        "mixture": plan.sources(),
        "epoch_size": plan.epoch_size,
        "train_labels": list(plan.train_labels),
        "eval_shards": list(plan.eval_shards),
    }
