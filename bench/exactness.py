"""One audit for every loader of ``python -m bench loader``: what one epoch of the mixture really delivered.

:func:`audit` takes the batches a loader delivered, each as ``(source, index)`` arrays (which sample of which
source of the mixture fills each place of the batch), and the mixture (counts, weights, kinds). It reports:

* ``real_exact`` / ``generated_exact``: the share of each kind's images seen exactly as often as the weight
  asks (10× and 1× in the paper's recipe; a fractional weight ``w`` accepts ``floor(w)`` or ``ceil(w)``);
* ``samples_lost``: the occurrences the epoch asked for and did not deliver (Σ over images of
  ``max(0, expected − seen)``), ``samples_extra`` the ones delivered beyond it (padding, repeats), and
  ``real_never_seen`` / ``generated_never_seen``;
* the share of generated images per batch (``gen_share_mean``, ``_std``, ``_min``, ``_max``) against this
  project's proven bound (``loaders.batch.sampler.mixing_bound``: in a window of ``L`` places the count ``c`` of
  a source of planned proportion ``p`` satisfies ``|c − L·p| < bound``), with ``batches_outside_bound``.

The callers (``bench.loader.audit_backend``) hand it each loader's order over one epoch, taken without the
costly transform wherever the loader decides its order before it reads a sample (every loader here: see
bench/README.md, "The peer loaders").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KINDS = ("real", "generated")  # the columns; a kind of set (shards.format.manifest.KINDS) without one is not a column


def expected_multiplicity(weight: float) -> tuple[int, int]:
    """The multiplicities an exact epoch gives a sample of a source of weight ``weight``: ``(floor, ceil)``."""
    return int(np.floor(weight)), int(np.ceil(weight))


def epoch_samples(counts: Sequence[int], weights: Sequence[float]) -> int:
    """The samples of one exact epoch of the mixture (``plan_epoch``'s length for integer weights)."""
    return int(round(sum(w * n for n, w in zip(counts, weights))))


def audit(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    counts: Sequence[int],
    weights: Sequence[float],
    kinds: Sequence[str],
    *,
    max_samples: int | None = None,
) -> dict:
    """The exactness figures of ``batches`` (``(source, index)`` per batch, in delivery order) against one epoch
    of the mixture ``counts`` × ``weights``; ``kinds`` names each source's kind ("real", "generated", …).
    ``max_samples``: stop once that many samples were counted (an endless stream: one epoch's worth)."""
    from loaders.batch.sampler import mixing_bound

    counts, weights = [int(n) for n in counts], [float(w) for w in weights]
    seen = [np.zeros(n, dtype=np.int64) for n in counts]
    generated = np.array([k == "generated" for k in kinds])
    planned = np.array([w * n for n, w in zip(counts, weights)], dtype=np.float64)
    p_gen = float(planned[generated].sum() / planned.sum()) if planned.sum() else 0.0
    # the bound for the generated images together: one source when a single set is generated
    bound = float(mixing_bound(planned / planned.sum())[generated].sum()) if generated.any() else 0.0
    shares, outside, delivered, foreign = [], 0, 0, 0
    for source, index in batches:
        source, index = np.asarray(source).astype(np.int64), np.asarray(index).astype(np.int64)
        if max_samples is not None and delivered + len(source) > max_samples:
            source, index = source[: max_samples - delivered], index[: max_samples - delivered]
        if not len(source):
            break
        for s in range(len(counts)):
            sel = index[source == s]
            ok = (sel >= 0) & (sel < counts[s])
            foreign += int((~ok).sum())
            np.add.at(seen[s], sel[ok], 1)
        foreign += int(((source < 0) | (source >= len(counts))).sum())
        g = int(generated[source.clip(0, len(counts) - 1)].sum())
        shares.append(g / len(source))
        outside += abs(g - len(source) * p_gen) >= bound if generated.any() else 0
        delivered += len(source)
        if max_samples is not None and delivered >= max_samples:
            break
    share = np.asarray(shares, dtype=np.float64)
    row = {
        "epoch_samples": epoch_samples(counts, weights),
        "audited_samples": delivered,
        "audited_batches": len(shares),
        "samples_lost": 0,
        "samples_extra": 0,
        "samples_unknown": foreign,
    }
    for kind in KINDS:
        ids = [s for s, k in enumerate(kinds) if k == kind and weights[s] > 0]
        if not ids:
            row[f"{kind}_exact"] = row[f"{kind}_never_seen"] = None
            continue
        exact = never = total = 0
        for s in ids:
            lo, hi = expected_multiplicity(weights[s])
            exact += int(((seen[s] >= lo) & (seen[s] <= hi)).sum())
            never += int((seen[s] == 0).sum())
            total += counts[s]
        row[f"{kind}_exact"] = round(exact / total, 6) if total else None
        row[f"{kind}_never_seen"] = never
    for s, w in enumerate(weights):
        lo, hi = expected_multiplicity(w)
        row["samples_lost"] += int(np.maximum(lo - seen[s], 0).sum())
        row["samples_extra"] += int(np.maximum(seen[s] - hi, 0).sum())
    row.update(
        gen_share_planned=round(p_gen, 6),
        gen_share_mean=round(float(share.mean()), 6) if len(share) else None,
        gen_share_std=round(float(share.std()), 6) if len(share) else None,
        gen_share_min=round(float(share.min()), 6) if len(share) else None,
        gen_share_max=round(float(share.max()), 6) if len(share) else None,
        gen_count_bound=round(bound, 6),
        batches_outside_bound=int(outside),
    )
    return row


def share_text(row: dict) -> str | None:
    """The per-batch generated share for the table: ``mean±std [min–max]``."""
    r = row
    if any(r.get(f"gen_share_{k}") is None for k in ("mean", "std", "min", "max")):
        return None
    return f"{r['gen_share_mean']:.3f}±{r['gen_share_std']:.3f} [{r['gen_share_min']:.3f}–{r['gen_share_max']:.3f}]"
