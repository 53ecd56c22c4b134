"""The AdaInf inflation policy: how much weight real data gets, and how strong augmentation is.

The paper's contribution ("Do Generated Data Always Help Contrastive Learning?", ICLR 2024) is a rule,
not a number: give real data more weight than generated data (more so when the generated data is
worse), and weaken augmentation as the inflated data set grows. `decide()` turns a mixture into
concrete numbers and says why, in one of four modes:

* ``none``    - real data only: generated weights 0, real weight 1, the family's default preset.
* ``vanilla`` - every source weight 1 ("vanilla inflation"), default preset.
* ``adainf``  - the release's recipe: real weight 10, generated 1, the ``*-adainf`` preset.
* ``auto``    - the rule below, chosen from the mixture itself.

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
= 150k, + 1M = 1.05M); replication does not add images. The RandomResizedCrop minimum area is
piecewise-linear in log(size) through Figure 4's optima (25k, 0.02), (50k, 0.08), (150k, 0.20),
(1.05M, 0.30), clamped outside. Colour jitter (strength = multiplier of the family's default
(b, c, s, h); probability) goes, linearly in log(size), from the default (1.0, 0.8) at <= 50k to the
AdaInf preset at >= 150k: symmetric (0.5, 0.4), asymmetric (1.0, 0.4) - the release's BYOL/Barlow
AdaInf preset keeps the jitter strength, so auto does not set it for that family. The end point is
150k because that is where Figure 4's crop optimum equals the preset's 0.2, so auto reproduces the
release's preset exactly there; no measurement supports weakening jitter further.

Explicit settings always win: a per-source weight the user gave, and any augmentation knob in
``explicit``; the reasons name each override and what the policy would have picked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

MODES = ("none", "vanilla", "adainf", "auto")
FAMILIES = ("symmetric", "asymmetric")
METHOD_FAMILY = {"simclr": "symmetric", "moco": "symmetric", "mocov2plus": "symmetric", "byol": "asymmetric",
                 "barlow": "asymmetric", "barlow_twins": "asymmetric"}
PRESET_PREFIX = {"symmetric": "simclr", "asymmetric": "byol"}
# The knobs the policy sets, as in the paper notes' preset table (jitter strength is a multiplier).
PRESET_KNOBS = {
    "simclr": {"crop_min_scale": 0.08, "jitter_strength": 1.0, "jitter_p": 0.8},
    "simclr-adainf": {"crop_min_scale": 0.2, "jitter_strength": 0.5, "jitter_p": 0.4},
    "byol": {"crop_min_scale": 0.08, "jitter_strength": 1.0, "jitter_p": 0.8},
    "byol-adainf": {"crop_min_scale": 0.2, "jitter_strength": 1.0, "jitter_p": 0.4},
}
ADAINF_REAL_WEIGHT = 10.0
FID_REF, WEIGHT_MIN, WEIGHT_MAX = 2.0, 10.0, 50.0
CROP_ANCHORS = ((25_000, 0.02), (50_000, 0.08), (150_000, 0.20), (1_050_000, 0.30))
JITTER_SIZES = (50_000, 150_000)  # default at or below the first, AdaInf preset at or above the second


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
            raise ValueError(f"source {self.name!r}: kind {self.kind!r} is not 'real' or 'generated'")
        if self.count < 0:
            raise ValueError(f"source {self.name!r}: count {self.count} is negative")
        if self.fid is not None and not (math.isfinite(self.fid) and self.fid >= 0):
            raise ValueError(f"source {self.name!r}: fid {self.fid} must be a finite number >= 0")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"source {self.name!r}: weight {self.weight} must be a finite number >= 0")


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

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "family": self.family,
            "weights": dict(zip(self.sources, self.weights)),
            "aug_preset": self.aug_preset,
            "aug_overrides": dict(self.aug_overrides),
            "effective_size": self.effective_size,
            "reasons": list(self.reasons),
        }

    def describe(self) -> str:
        weights = ", ".join(f"{n} x{w:g}" for n, w in zip(self.sources, self.weights))
        knobs = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}"
                        for k, v in self.aug_overrides.items())
        lines = [f"inflation {self.mode} ({self.family} augmentation family)",
                 f"  weights: {weights}",
                 f"  effective size: {self.effective_size:,} distinct images",
                 f"  augmentation: {self.aug_preset}{knobs}", "  why:"]
        return "\n".join(lines + [f"    - {r}" for r in self.reasons])


def family_of(method: str) -> str:
    """Augmentation family of a method name (simclr/moco symmetric, byol/barlow asymmetric)."""
    if method not in METHOD_FAMILY:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHOD_FAMILY)}")
    return METHOD_FAMILY[method]


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
    """(strength, probability) from the default at <= 50k to the family's AdaInf preset at >= 150k."""
    lo, hi = PRESET_KNOBS[PRESET_PREFIX[family]], PRESET_KNOBS[PRESET_PREFIX[family] + "-adainf"]
    return tuple(_interp_log(size, JITTER_SIZES, [lo[k], hi[k]]) for k in ("jitter_strength", "jitter_p"))


def _auto_real_weight(generated: list[SourceInfo], reasons: list[str]) -> float:
    if not generated:
        reasons.append("real weight 1: no generated source with a positive weight, nothing to reweight")
        return 1.0
    missing = [s.name for s in generated if s.fid is None]
    total = sum(s.count for s in generated)
    fid = (sum(s.count * (FID_REF if s.fid is None else s.fid) for s in generated) / total
           if total else FID_REF)
    w = real_weight_for_fid(fid)
    if len(generated) == 1 and not missing:
        what = f"generated set {generated[0].name!r} has FID {fid:g}"
    elif len(missing) == len(generated):
        what = f"no FID in the manifest of {', '.join(map(repr, missing))}: falling back to the release's 10"
    else:
        what = f"count-weighted mean FID of the generated sets is {fid:.3g}"
        if missing:
            what += f" (no FID in the manifest of {', '.join(map(repr, missing))}: counted as FID {FID_REF:g})"
    reasons.append(f"real weight {w:g}: {what}; rule w = 10*sqrt(max(fid, 2)/2), rounded to an integer "
                   f"(exact replication), clamped to [{WEIGHT_MIN:g}, {WEIGHT_MAX:g}]")
    return w


def decide(sources: Sequence[SourceInfo], mode: str, family: str = "symmetric",
           explicit: Mapping[str, Any] | None = None) -> InflationDecision:
    """Weights and augmentation for ``sources`` under ``mode``; explicit weights and knobs win."""
    if mode not in MODES:
        raise ValueError(f"unknown inflation mode {mode!r}: expected one of {', '.join(MODES)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown augmentation family {family!r}: expected one of {', '.join(FAMILIES)}")
    if not sources:
        raise ValueError("the mixture has no sources: give at least one shard set")
    if mode != "vanilla" and not any(s.kind == "real" for s in sources):
        raise ValueError(f"--inflation {mode} needs a real source, but every source is generated: "
                         "add the real shard set or use --inflation vanilla")
    reasons: list[str] = []
    policy = {"none": {"real": 1.0, "generated": 0.0}, "vanilla": {"real": 1.0, "generated": 1.0},
              "adainf": {"real": ADAINF_REAL_WEIGHT, "generated": 1.0}}.get(mode)
    if mode == "none":
        reasons.append("real data only: generated weights 0")
    elif mode == "vanilla":
        reasons.append("vanilla inflation: every source weight 1")
    elif mode == "adainf":
        reasons.append(f"the release's recipe: real weight {ADAINF_REAL_WEIGHT:g}, generated weight 1")
    else:
        generated = [s for s in sources if s.kind == "generated" and s.weight != 0]
        policy = {"real": _auto_real_weight(generated, reasons), "generated": 1.0}
    weights = []
    for s in sources:
        w = policy[s.kind]
        if s.weight is not None and s.weight != w:
            reasons.append(f"weight {s.weight:g} for {s.name!r} given explicitly "
                           f"(policy {mode} would use {w:g})")
        weights.append(float(w if s.weight is None else s.weight))
    if not any(weights):
        raise ValueError("every source has weight 0: give at least one source a positive weight")
    size = sum(s.count for s, w in zip(sources, weights) if w > 0)

    preset = PRESET_PREFIX[family] + ("-adainf" if mode == "adainf" else "")
    chosen: dict[str, Any] = {}
    if mode == "auto":
        chosen["crop_min_scale"] = crop_min_scale_for_size(size)
        strength, p = jitter_for_size(size, family)
        if family == "symmetric":
            chosen["jitter_strength"] = strength
        chosen["jitter_p"] = p
        knobs = ", ".join(f"{k} {v:g}" for k, v in chosen.items())
        reasons.append(f"{knobs}: effective size {size:,} distinct images (real + generated); crop "
                       "interpolates Figure 4's optima (25k 0.02, 50k 0.08, 150k 0.2, 1.05M 0.3) in "
                       "log(size), jitter goes from the default at 50k to the AdaInf preset at 150k")
    else:
        reasons.append(f"augmentation preset {preset}")
    for key, value in (explicit or {}).items():
        if value is None:
            continue
        would = chosen.get(key, PRESET_KNOBS[preset].get(key))
        reasons.append(f"{key} {value} given explicitly" + ("" if would is None else
                       f" (policy {mode} would use {would:g})"))
        chosen[key] = value
    return InflationDecision(mode=mode, family=family, sources=tuple(s.name for s in sources),
                             weights=tuple(weights), aug_preset=preset, aug_overrides=chosen,
                             reasons=tuple(reasons), effective_size=size)


def sources_from_mixture(mixture: Any) -> list[SourceInfo]:
    """SourceInfo per source of a ``loaders.mixture.Mixture`` (``Source(name, path, manifest, weight)``)."""
    return [SourceInfo(s.name, s.manifest.kind, s.manifest.count, s.manifest.fid,
                       s.weight if getattr(s, "weight_given", True) else None)
            for s in mixture.sources]
