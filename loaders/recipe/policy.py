"""The AdaInf inflation policy: how much weight real data gets, and how strong augmentation is.

The paper's contribution ("Do Generated Data Always Help Contrastive Learning?", ICLR 2024) is a rule,
not a number: give real data more weight than generated data, and weaken augmentation as the inflated
data set grows. `decide()` turns a mixture into concrete numbers and says why. The augmentation comes
from the method's *family* (``loaders.recipe.augment.FAMILIES``: ``symmetric`` for SimCLR, ``symmetric_weak``
for MoCo v2+, ``asymmetric`` for BYOL and Barlow Twins), which pairs a baseline preset with an AdaInf
preset, both the release's files (``loaders.recipe.augment.PRESETS``). Four modes:

* ``adainf``  (the default) - the release's recipe (PKU-ML/adainf README): real data replicated 10x
  (``data.dup=10``), the generated set once, the family's AdaInf preset (``augmentations=
  symmetric_adainf.yaml`` / ``asymmetric_adainf.yaml``). With no generated source of positive weight
  in the mixture there is nothing to inflate: the release's no-inflation recipe, every weight 1 and the
  family's baseline preset, and the reasons say so.
* ``none``    - real data only (the README's "no inflation"): generated weights 0, real weight 1, the
  family's baseline preset.
* ``vanilla`` - every source weight 1 (the README's "vanilla inflation", ``data.dup=1``), the family's
  baseline preset.
* ``auto``    - this project's extrapolation beyond the paper, opt-in: the rule below, chosen from the
  mixture itself. Nothing in the paper or the release sets weights from FID or interpolates
  augmentation in the data size; use it to explore, not to reproduce.

Real weight (auto). The release replicates real data 10x next to generated sets of FID 1.94-1.96.
Worse generators deserve less trust, so the weight grows with FID:
``w = 10 * sqrt(max(fid, 2) / 2)``, rounded to an integer (the sampler replicates exactly) and
clamped to [10, 50]. FID 1.96 -> 10, 8 -> 20, 18.27 (the 5k-subset generator) -> 30, >= 50 -> 50.
The FID used is the count-weighted mean over generated sources (each set's share of generated
samples in an epoch is proportional to its count); a generated source without ``fid`` in its
manifest is counted as FID 2, i.e. the release's weight 10, and the reasons say so. With no
generated source (or none with a positive weight) nothing is reweighted: real weight 1.

Augmentation (auto). The effective size is the number of *distinct* images in sources of positive
weight, real + generated, as on the x-axis of the paper's Figure 4 (CIFAR-10 50k, + 0.1M generated
= 150k, + 1M = 1.05M); replication does not add images. Starting from the family's baseline preset,
the RandomResizedCrop minimum area is piecewise-linear in log(size) through Figure 4's optima (25k,
0.02), (50k, 0.08), (150k, 0.20), (1.05M, 0.30), clamped outside; colour jitter (strength = multiplier
of the baseline preset's (b, c, s, h); probability) goes, linearly in log(size), from the baseline
preset at <= 50k to the family's AdaInf preset at >= 150k (both end points read from the presets;
where the two presets' jitter values are equal, as for the asymmetric family, only the probability
moves). At 150k, where Figure 4's crop optimum equals the AdaInf presets' 0.2, auto reproduces the
AdaInf preset exactly; no measurement supports weakening jitter further.

Explicit settings always win: a per-source weight the user gave, and any augmentation knob in
``explicit``; the reasons name each override and what the policy would have picked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loaders.recipe.augment import PRESETS, family_presets, jitter_strength
from shards.base.errors import ConfigError

INFLATION_MODES = ("none", "vanilla", "adainf", "auto")
DEFAULT_MODE = "adainf"
# PKU-ML/adainf README, "Pretrain SimCLR with Adaptive Inflation": data.dup=10 (main_pretrain.py concatenates
# the real set dup times and the generated set once)
ADAINF_REAL_WEIGHT = 10.0
FID_REF, WEIGHT_MIN, WEIGHT_MAX = 2.0, 10.0, 50.0
CROP_ANCHORS = ((25_000, 0.02), (50_000, 0.08), (150_000, 0.20), (1_050_000, 0.30))  # the paper's Figure 4
JITTER_SIZES = (50_000, 150_000)  # baseline preset at or below the first, AdaInf preset at or above the second
AUG_KNOBS = ("crop_min_scale", "jitter_strength", "jitter_p")  # what the policy sets on top of a preset


def preset_knobs(preset: str, family: str) -> dict[str, float]:
    """The policy's knobs of a preset, read from ``loaders.recipe.augment.PRESETS``: RandomResizedCrop minimum area,
    jitter strength as a multiple of the family's baseline preset, jitter probability."""
    views = PRESETS[preset]
    return {
        "crop_min_scale": views[0].crop_scale[0],
        "jitter_strength": jitter_strength(views, PRESETS[family_presets(family)[0]]),
        "jitter_p": views[0].jitter_p,
    }


@dataclass(frozen=True)
class SourceInfo:
    """One source of a mixture as the policy sees it; ``weight`` is the user's explicit weight or None."""

    name: str
    kind: str  # "real" | "generated"
    count: int
    fid: float | None = None
    weight: float | None = None

    def __post_init__(self):
        if self.kind not in ("real", "generated"):
            raise ConfigError(f"source {self.name!r}: kind {self.kind!r} is not 'real' or 'generated'")
        if self.count < 0:
            raise ConfigError(f"source {self.name!r}: count {self.count} is negative")
        if self.fid is not None and not (math.isfinite(self.fid) and self.fid >= 0):
            raise ConfigError(f"source {self.name!r}: fid {self.fid} must be a finite number >= 0")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"source {self.name!r}: weight {self.weight} must be a finite number >= 0")


@dataclass(frozen=True)
class InflationDecision:
    mode: str
    family: str
    sources: tuple[str, ...]  # source names, in input order
    weights: tuple[float, ...]  # one per source
    aug_preset: str
    aug_overrides: dict[str, Any]  # preset(aug_preset, **aug_overrides) is the augmentation to use
    reasons: tuple[str, ...]
    effective_size: int  # distinct images in sources of positive weight
    # the run's crop_min_scale, jitter_strength (x the family's baseline preset) and jitter_p, overrides included
    knobs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "family": self.family,
            "weights": dict(zip(self.sources, self.weights)),
            "aug_preset": self.aug_preset,
            "aug_overrides": dict(self.aug_overrides),
            "knobs": dict(self.knobs),
            "effective_size": self.effective_size,
            "reasons": list(self.reasons),
        }

    def describe(self) -> str:
        weights = ", ".join(f"{n} x{w:g}" for n, w in zip(self.sources, self.weights))
        knobs = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in self.aug_overrides.items())
        lines = [
            f"inflation {self.mode} ({self.family} augmentation family)",
            f"  weights: {weights}",
            f"  effective size: {self.effective_size:,} distinct images",
            f"  augmentation: {self.aug_preset}{knobs}",
        ]
        if self.knobs:
            lines.append(
                f"  knobs: crop_min_scale {self.knobs['crop_min_scale']:g}, jitter_strength "
                f"{self.knobs['jitter_strength']:g} (x the {self.family} baseline preset), "
                f"jitter_p {self.knobs['jitter_p']:g}"
            )
        lines.append("  why:")
        return "\n".join(lines + [f"    - {r}" for r in self.reasons])


def real_weight_for_fid(fid: float) -> float:
    """The auto rule: 10*sqrt(max(fid, 2)/2), rounded to an integer, clamped to [10, 50]."""
    w = math.floor(ADAINF_REAL_WEIGHT * math.sqrt(max(fid, FID_REF) / FID_REF) + 0.5)
    return float(min(max(w, WEIGHT_MIN), WEIGHT_MAX))


def _interp_log(size: int, xs: Sequence[float], ys: Sequence[float]) -> float:
    return round(float(np.interp(math.log(max(size, 1)), np.log(xs), ys)), 4)


def crop_min_scale_for_size(size: int) -> float:
    """RandomResizedCrop minimum area through Figure 4's optima, piecewise-linear in log(size)."""
    return _interp_log(size, [s for s, _ in CROP_ANCHORS], [c for _, c in CROP_ANCHORS])


def jitter_for_size(size: int, family: str) -> tuple[float, float]:
    """(strength, probability) from the family's baseline preset at <= 50k to its AdaInf preset at >= 150k."""
    lo, hi = (preset_knobs(p, family) for p in family_presets(family))
    return tuple(_interp_log(size, JITTER_SIZES, [lo[k], hi[k]]) for k in ("jitter_strength", "jitter_p"))


def _auto_real_weight(generated: list[SourceInfo], reasons: list[str]) -> float:
    if not generated:
        reasons.append("real weight 1: no generated source with a positive weight, nothing to reweight")
        return 1.0
    missing = [s.name for s in generated if s.fid is None]
    total = sum(s.count for s in generated)
    fid = sum(s.count * (FID_REF if s.fid is None else s.fid) for s in generated) / total if total else FID_REF
    w = real_weight_for_fid(fid)
    if len(generated) == 1 and not missing:
        what = f"generated set {generated[0].name!r} has FID {fid:g}"
    elif len(missing) == len(generated):
        what = f"no FID in the manifest of {', '.join(map(repr, missing))}: falling back to the release's 10"
    else:
        what = f"count-weighted mean FID of the generated sets is {fid:.3g}"
        if missing:
            what += f" (no FID in the manifest of {', '.join(map(repr, missing))}: counted as FID {FID_REF:g})"
    reasons.append(
        f"real weight {w:g}: {what}; rule w = 10*sqrt(max(fid, 2)/2), rounded to an integer "
        f"(exact replication), clamped to [{WEIGHT_MIN:g}, {WEIGHT_MAX:g}]"
    )
    return w


def decide(
    sources: Sequence[SourceInfo], mode: str = DEFAULT_MODE, *, family: str, explicit: Mapping[str, Any] | None = None
) -> InflationDecision:
    """Weights and augmentation for ``sources`` under ``mode`` for an augmentation ``family``
    (a ``loaders.recipe.augment.FAMILIES`` name); explicit weights and knobs win."""
    if mode not in INFLATION_MODES:
        raise ConfigError(f"unknown inflation mode {mode!r}: expected one of {', '.join(INFLATION_MODES)}")
    baseline, adainf = family_presets(family)
    if not sources:
        raise ConfigError("the mixture has no sources: give at least one shard set")
    if mode != "vanilla" and not any(s.kind == "real" for s in sources):
        raise ConfigError(
            f"--inflation {mode} needs a real source, but every source is generated: "
            "add the real shard set or use --inflation vanilla"
        )
    reasons: list[str] = []
    generated = [s for s in sources if s.kind == "generated" and s.weight != 0 and s.count > 0]
    preset = baseline
    if mode == "none":
        policy = {"real": 1.0, "generated": 0.0}
        reasons.append(f"no inflation (the release's baseline): real data only, generated weights 0, preset {baseline}")
    elif mode == "vanilla":
        policy = {"real": 1.0, "generated": 1.0}
        reasons.append(f"vanilla inflation (the release's data.dup=1): every source weight 1, preset {baseline}")
    elif mode == "adainf" and generated:
        policy, preset = {"real": ADAINF_REAL_WEIGHT, "generated": 1.0}, adainf
        reasons.append(
            f"AdaInf, the release's recipe: real weight {ADAINF_REAL_WEIGHT:g} (data.dup=10), generated "
            f"weight 1, preset {adainf}"
        )
    elif mode == "adainf":
        policy = {"real": 1.0, "generated": 1.0}
        reasons.append(
            f"AdaInf with no generated source of positive weight: nothing to inflate, so the release's "
            f"no-inflation recipe: every weight 1, preset {baseline}"
        )
    else:
        policy = {"real": _auto_real_weight(generated, reasons), "generated": 1.0}
    weights = []
    for s in sources:
        w = policy[s.kind]
        if s.weight is not None and s.weight != w:
            reasons.append(f"weight {s.weight:g} for {s.name!r} given explicitly (policy {mode} would use {w:g})")
        weights.append(float(w if s.weight is None else s.weight))
    if not any(weights):
        raise ConfigError("every source has weight 0: give at least one source a positive weight")
    size = sum(s.count for s, w in zip(sources, weights) if w > 0)

    chosen: dict[str, Any] = {}
    if mode == "auto":
        chosen["crop_min_scale"] = crop_min_scale_for_size(size)
        strength, p = jitter_for_size(size, family)
        if preset_knobs(adainf, family)["jitter_strength"] != 1.0:
            chosen["jitter_strength"] = strength
        chosen["jitter_p"] = p
        knobs = ", ".join(f"{k} {v:g}" for k, v in chosen.items())
        reasons.append(
            f"auto (this project's extrapolation, not the paper's): preset {baseline} with {knobs}: "
            f"effective size {size:,} distinct images (real + generated); crop interpolates Figure 4's "
            "optima (25k 0.02, 50k 0.08, 150k 0.2, 1.05M 0.3) in log(size), jitter goes from "
            f"{baseline} at 50k to {adainf} at 150k"
        )
    policy_knobs = {**preset_knobs(preset, family), "jitter_strength": 1.0, **chosen}  # in override units
    for key, value in (explicit or {}).items():
        if value is None:
            continue
        would = policy_knobs.get(key)
        reasons.append(
            f"{key} {value} given explicitly" + ("" if would is None else f" (policy {mode} would use {would:g})")
        )
        chosen[key] = value
    knobs = preset_knobs(preset, family)
    knobs["crop_min_scale"] = chosen.get("crop_min_scale", knobs["crop_min_scale"])
    knobs["jitter_p"] = chosen.get("jitter_p", knobs["jitter_p"])
    knobs["jitter_strength"] = round(knobs["jitter_strength"] * chosen.get("jitter_strength", 1.0), 9)
    return InflationDecision(
        mode=mode,
        family=family,
        sources=tuple(s.name for s in sources),
        weights=tuple(weights),
        aug_preset=preset,
        aug_overrides=chosen,
        reasons=tuple(reasons),
        effective_size=size,
        knobs=knobs,
    )


def sources_from_mixture(mixture: Any) -> list[SourceInfo]:
    """SourceInfo per source of a ``loaders.recipe.mixture.Mixture`` (``Source(name, path, manifest, weight)``)."""
    return [
        SourceInfo(
            s.name,
            s.manifest.kind,
            s.manifest.count,
            s.manifest.fid,
            s.weight if getattr(s, "weight_given", True) else None,
        )
        for s in mixture.sources
    ]
