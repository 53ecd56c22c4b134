"""From command-line choices to the mixture and augmentation a run uses: the one place where the
inflation policy (``loaders.recipe.policy``), the augmentation presets (``loaders.recipe.augment.PRESETS``) and explicit
overrides meet, shared by ``train.py``, ``python -m loaders audit`` and ``python -m loaders preview``.

* ``family``: the augmentation family the method declares (``loaders.recipe.augment.FAMILIES``: ``symmetric``,
  ``symmetric_weak``, ``asymmetric``); this package knows nothing of models.
* ``--inflation none|vanilla|adainf|auto`` (default ``adainf``, the release's recipe) rewrites the weights
  the user did not give and picks the augmentation (``loaders.recipe.policy.decide``);
* ``--aug auto`` (default) follows the inflation policy; ``baseline`` / ``adainf`` name the family's
  presets; a preset name (``loaders.recipe.augment.PRESET_NAMES``, or an old alias) picks it directly. An
  explicit ``--aug`` wins over the policy's preset, the policy's weights stay;
* explicit knobs (``--crop-min-scale``, ``--jitter-strength``, ``--jitter-p``, …) always win.

With no flag at all, a mixture holding generated data trains with the release's AdaInf recipe: real
weight 10, generated 1, the family's AdaInf preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loaders.recipe.augment import (
    PRESET_ALIASES,
    PRESET_NAMES,
    AugConfig,
    canonical_preset,
    family_presets,
    preset,
)
from loaders.recipe.mixture import Mixture
from loaders.recipe.policy import (
    DEFAULT_MODE,
    INFLATION_MODES,
    InflationDecision,
    decide,
    sources_from_mixture,
)
from shards.base.errors import ConfigError

AUG_CHOICES = ("auto", "baseline", "adainf", *PRESET_NAMES, *PRESET_ALIASES)


@dataclass(frozen=True)
class Recipe:
    mixture: Mixture  # with the weights the run uses
    aug: AugConfig
    aug_name: str  # the preset the augmentation starts from (a loaders.recipe.augment.PRESETS name)
    aug_overrides: dict  # knobs applied on top of it
    decision: InflationDecision  # the policy's decision (weights, its preset, why)

    @property
    def epoch_size(self) -> float:
        return self.mixture.expected_epoch_size

    def to_dict(self) -> dict:
        return {
            "mixture": self.mixture.describe(),
            "aug_preset": self.aug_name,
            "aug_overrides": dict(self.aug_overrides),
            "aug": self.aug.to_dict(),
            "inflation": self.decision.to_dict(),
        }

    def describe(self) -> str:
        text = self.decision.describe()
        knobs = {k: v for k, v in self.aug_overrides.items() if k != "size"}  # the crop size is no choice of --aug
        if self.aug_name != self.decision.aug_preset or knobs != self.decision.aug_overrides:
            text += f"\n  augmentation chosen with --aug: {self.aug_name}" + (f" with {knobs}" if knobs else "")
        return text


def resolve_recipe(
    mixture: Mixture,
    *,
    family: str,
    inflation: str | None = DEFAULT_MODE,
    aug: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    size: int | None = None,
) -> Recipe:
    """The run's mixture and augmentation; ValueError (one line) for an unknown choice.

    ``family``: a ``loaders.recipe.augment.FAMILIES`` name. ``inflation``: a policy mode (``None`` = the default,
    ``adainf``). ``aug``: ``auto`` = the policy's preset and knobs; ``baseline`` / ``adainf`` = the
    family's presets; or a preset name. ``overrides`` (``None`` values ignored) always win; ``size`` sets
    the output side.
    """
    if aug not in AUG_CHOICES:
        raise ConfigError(f"--aug {aug!r}: choose one of {', '.join(AUG_CHOICES)}")
    inflation = DEFAULT_MODE if inflation is None else inflation
    if inflation not in INFLATION_MODES:
        raise ConfigError(f"--inflation {inflation!r}: choose one of {', '.join(INFLATION_MODES)}")
    baseline, adainf = family_presets(family)
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    decision = decide(sources_from_mixture(mixture), inflation, family=family, explicit=explicit)
    mixture = mixture.with_weights(decision.weights)
    if aug == "auto":
        name, knobs = decision.aug_preset, dict(decision.aug_overrides)
    else:
        name = {"baseline": baseline, "adainf": adainf}.get(aug) or canonical_preset(aug)
        knobs = dict(explicit)
    if size is not None:
        knobs["size"] = size
    return Recipe(mixture, preset(name, **knobs), name, knobs, decision)
