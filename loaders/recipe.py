"""From command-line choices to the mixture and augmentation a run uses: the one place where the
inflation policy (``loaders.policy``), the augmentation presets and explicit overrides meet, shared by
``train.py`` and ``python -m loaders audit``.

* ``--inflation none|vanilla|adainf|auto`` rewrites the weights the user did not give and picks the
  augmentation (``loaders.policy.decide``);
* ``--aug PRESET`` names a preset (``simclr``, ``simclr-adainf``, ``byol``, ``byol-adainf``), or
  ``default`` / ``adainf`` (the method family's preset), or ``auto`` (the policy's augmentation for the
  mixture as given, weights untouched). An explicit ``--aug`` preset wins over the policy's preset;
* explicit knobs (``--crop-min-scale``, ``--jitter-strength``, ``--jitter-p``, …) always win.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .augment import PRESET_NAMES, AugConfig, preset
from .mixture import Mixture
from .policy import MODES, InflationDecision, decide, family_of, sources_from_mixture, PRESET_PREFIX

AUG_CHOICES = ("auto", "default", "adainf", *PRESET_NAMES)
INFLATION_CHOICES = MODES
AUG_KNOBS = ("crop_min_scale", "jitter_strength", "jitter_p")  # the knobs the policy may set


@dataclass(frozen=True)
class Recipe:
    mixture: Mixture  # with the weights the run uses
    aug: AugConfig
    aug_name: str  # the preset the augmentation starts from
    aug_overrides: dict  # knobs applied on top of it
    decision: InflationDecision | None  # the policy's decision, when one was asked for

    @property
    def epoch_size(self) -> float:
        return self.mixture.expected_epoch_size

    def to_dict(self) -> dict:
        return {"mixture": self.mixture.describe(), "aug_preset": self.aug_name,
                "aug_overrides": dict(self.aug_overrides), "aug": self.aug.to_dict(),
                "inflation": self.decision.to_dict() if self.decision else None}

    def describe(self) -> str:
        if self.decision:
            return self.decision.describe()
        return "\n".join(["mixture: " + ", ".join(f"{s.name} ({s.kind}, {s.count:,}) x{s.weight:g}"
                                                  for s in self.mixture.sources),
                          f"augmentation: {self.aug_name}" + (f" with {self.aug_overrides}" if self.aug_overrides else "")])


def resolve_recipe(mixture: Mixture, *, aug: str = "auto", inflation: str | None = None,
                   method: str = "simclr", overrides: Mapping[str, Any] | None = None, size: int | None = None) -> Recipe:
    """The run's mixture and augmentation; ValueError (one line) for an unknown choice.

    ``aug``: ``auto`` = the policy's choice (with ``inflation=None``: the ``auto`` policy's augmentation for
    the mixture as given, weights untouched); ``default`` / ``adainf`` = the method family's preset; or a
    preset name. ``overrides`` (``None`` values ignored) always win; ``size`` sets the output side.
    """
    if aug not in AUG_CHOICES:
        raise ValueError(f"--aug {aug!r}: choose one of {', '.join(AUG_CHOICES)}")
    if inflation is not None and inflation not in MODES:
        raise ValueError(f"--inflation {inflation!r}: choose one of {', '.join(MODES)}")
    family = family_of(method)
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    decision = None
    if inflation is not None:
        decision = decide(sources_from_mixture(mixture), inflation, family, explicit)
        mixture = mixture.with_weights(decision.weights)
    elif aug == "auto":  # the policy's augmentation for the mixture exactly as given
        infos = [dataclasses.replace(s, weight=w) for s, w in zip(sources_from_mixture(mixture), mixture.weights)]
        decision = decide(infos, "auto", family, explicit)
    if aug == "auto":
        name, knobs = decision.aug_preset, dict(decision.aug_overrides)
    else:
        name = {"default": PRESET_PREFIX[family], "adainf": PRESET_PREFIX[family] + "-adainf"}.get(aug, aug)
        knobs = dict(explicit)
    if size is not None:
        knobs["size"] = size
    return Recipe(mixture, preset(name, **knobs), name, knobs, decision)
