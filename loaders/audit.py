"""Audit a mixture by running the real loader: what an epoch actually delivers, before GPU hours.

Reports samples per epoch, per-source counts, how many times each key appeared (a histogram per
source), per-batch source fractions (mean, min, max, std), label counts and samples/s. Counting is
by ``(source, index)`` with ``np.bincount`` — no Python object per sample.

:func:`plan_report` is the same plan without running the pipeline (``--plan-only``, under a second):
the epoch plans themselves (``loaders.batch.sampler.plan_epoch``), per source the samples per epoch and the
share of every batch with its guaranteed bound, and the steps.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from loaders.batch.loader import TrainLoader
from loaders.batch.sampler import mixing_bound, plan_epoch
from loaders.recipe.augment import AugConfig
from loaders.recipe.mixture import Mixture
from shards.base.host import LOADER_THREADS


def run_audit(
    mixture: Mixture,
    aug: AugConfig,
    *,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    device: str = "cpu",
    loader_device: str = "auto",
    num_threads: int = LOADER_THREADS,
    drop_last: bool = False,
    on_corrupt: str = "error",
    progress=None,
) -> dict:
    loader = TrainLoader(
        mixture,
        aug,
        batch_size,
        seed=seed,
        device=device,
        loader_device=loader_device,
        num_threads=num_threads,
        drop_last=drop_last,
        on_corrupt=on_corrupt,
    )
    names = [s.name for s in mixture.sources]
    report = {
        "sources": mixture.describe(),
        "batch_size": batch_size,
        "seed": seed,
        "drop_last": drop_last,
        "views": len(aug.views),
        "steps_per_epoch": loader.steps_per_epoch,
        "epochs": [],
    }
    for epoch in range(epochs):
        seen = [np.zeros(s.count, np.int64) for s in mixture.sources]
        fractions, labels = [], collections.Counter()
        t0, n = time.perf_counter(), 0
        for batch in loader.epoch(epoch, 0):
            src, idx, lab = batch.source.cpu().numpy(), batch.index.cpu().numpy(), batch.labels.cpu().numpy()
            for s in range(len(seen)):
                seen[s] += np.bincount(idx[src == s], minlength=len(seen[s]))
            fractions.append(np.bincount(src, minlength=len(seen)) / len(src))
            labels.update(lab.tolist())
            n += len(src)
            if progress:
                progress(len(src))
        elapsed = time.perf_counter() - t0
        fr = np.array(fractions)
        # what the epoch's plan puts in the batches served: all of it, or without the dropped partial batch
        served = loader.plan(epoch).source[: loader.steps_per_epoch * batch_size if drop_last else None]
        expected = np.bincount(served, minlength=len(names))
        report["epochs"].append(
            {
                "epoch": epoch,
                "samples": n,
                "planned": loader.samples_per_epoch,
                "dropped": loader.samples_per_epoch - len(served),  # a last partial batch (--drop-last)
                "per_source": {name: int(seen[s].sum()) for s, name in enumerate(names)},
                "expected_per_source": {name: int(expected[s]) for s, name in enumerate(names)},
                "key_multiplicity": {
                    name: {str(k): int(v) for k, v in enumerate(np.bincount(seen[s])) if v}
                    for s, name in enumerate(names)
                },
                "batch_fraction": {
                    name: {
                        "mean": float(fr[:, s].mean()),
                        "min": float(fr[:, s].min()),
                        "max": float(fr[:, s].max()),
                        "std": float(fr[:, s].std()),
                    }
                    for s, name in enumerate(names)
                }
                if len(fr)
                else {},
                "labels": {str(k): v for k, v in sorted(labels.items())},
                "corrupt_skipped": loader.stats.corrupt,
                "corrupt_keys": sorted(set(loader.stats.corrupt_keys)),  # SOURCE/KEY, the first 100 skipped
                "seconds": round(elapsed, 3),
                "samples_per_s": round(n / elapsed, 1) if elapsed > 0 else None,
            }
        )
    return report


def plan_report(mixture: Mixture, *, batch_size: int, epochs: int = 1, seed: int = 0, drop_last: bool = False) -> dict:
    """The plan of ``epochs`` epochs as the loader will serve it (one process), without running it: per
    epoch the samples and steps, per source its samples, the share of a batch it gets (expected, the
    guaranteed bound, and the fewest / most it has in any batch of the plan)."""
    counts, weights = mixture.counts, mixture.weights
    names = [s.name for s in mixture.sources]
    out = {"batch_size": batch_size, "seed": seed, "drop_last": drop_last, "epochs": []}
    for epoch in range(epochs):
        plan = plan_epoch(counts, weights, seed, epoch, names=names)
        n = len(plan)
        steps = plan.num_batches(batch_size, drop_last)
        per_source = plan.counts(len(names))
        p = per_source / max(n, 1)
        bound = mixing_bound(p)
        full = (n // batch_size) * batch_size
        per_batch = (
            np.stack([np.bincount(b, minlength=len(names)) for b in plan.source[:full].reshape(-1, batch_size)])
            if full
            else np.zeros((0, len(names)), np.int64)
        )
        out["epochs"].append(
            {
                "epoch": epoch,
                "samples": n,
                "steps": steps,
                "sources": {
                    name: {
                        "count": int(mixture.sources[s].count),
                        "weight": float(weights[s]),
                        "samples": int(per_source[s]),
                        "share": float(p[s]),
                        "per_batch": float(p[s] * batch_size),
                        "per_batch_bound": float(bound[s]),
                        "per_batch_min": int(per_batch[:, s].min()) if len(per_batch) else None,
                        "per_batch_max": int(per_batch[:, s].max()) if len(per_batch) else None,
                    }
                    for s, name in enumerate(names)
                },
            }
        )
    out["total_steps"] = sum(e["steps"] for e in out["epochs"])
    return out


def format_plan(plan: dict) -> str:
    b = plan["batch_size"]
    lines = []
    for e in plan["epochs"]:
        lines.append(
            f"epoch {e['epoch']}: {e['samples']:,} samples = {e['steps']:,} steps of {b}"
            + _partial_batch(e["samples"] % b, plan["drop_last"])
        )
        for name, v in e["sources"].items():
            seen = (
                f", {v['per_batch_min']}-{v['per_batch_max']} in the plan's batches"
                if v["per_batch_min"] is not None
                else ""
            )
            lines.append(
                f"  {name}: {v['samples']:,} samples ({v['count']:,} x weight {v['weight']:g}), "
                f"{v['share']:.2%} of every batch = {v['per_batch']:.1f} of {b} "
                f"(guaranteed within ±{v['per_batch_bound']:.2f}{seen})"
            )
    if len(plan["epochs"]) > 1:
        lines.append(f"{plan['total_steps']:,} steps in {len(plan['epochs'])} epochs")
    return "\n".join(lines)


def _partial_batch(rest: int, dropped: bool) -> str:
    """What became of an epoch's last ``rest`` samples (fewer than a batch), as the plan line says it."""
    if not rest:
        return ""
    if dropped:
        return f" (the last {rest} samples, a partial batch, dropped as training does; --keep-last counts them)"
    return f" (the last partial batch of {rest} counted, --keep-last; training drops it)"


def format_report(report: dict) -> str:
    lines = [
        f"batch size {report['batch_size']}, {report['views']} views, {report['steps_per_epoch']} steps/epoch, "
        f"seed {report['seed']}, drop_last {report['drop_last']}"
    ]
    for s in report["sources"]:
        lines.append(
            f"  source {s['name']}: {s['kind']} {s['format']} {s['count']} samples, weight {s['weight']}"
            + (f", fid {s['fid']}" if s["fid"] is not None else "")
            + f"  ({s['path']})"
        )
    for e in report["epochs"]:
        lines.append(
            f"epoch {e['epoch']}: {e['samples']} samples (planned {e['planned']}), "
            + (f"{e['dropped']} in a last partial batch dropped as training does, " if e.get("dropped") else "")
            + f"{e['samples_per_s']} samples/s, {e['corrupt_skipped']} corrupt skipped"
        )
        for name, count in e["per_source"].items():
            f = e["batch_fraction"].get(name, {})
            hist = ", ".join(f"{k}x: {v}" for k, v in e["key_multiplicity"][name].items())
            lines.append(
                f"  {name}: {count} (expected {e['expected_per_source'][name]:g}); keys seen {hist}; "
                f"batch fraction mean {f.get('mean', 0):.4f} min {f.get('min', 0):.4f} "
                f"max {f.get('max', 0):.4f} std {f.get('std', 0):.4f}"
            )
        lines.append("  labels: " + ", ".join(f"{k}: {v}" for k, v in e["labels"].items()))
    return "\n".join(lines)
