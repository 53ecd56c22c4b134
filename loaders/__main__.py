"""``python -m loaders audit --shards … [--method M] [--inflation MODE] [--epochs N] [--json]`` and
``python -m loaders preview --shards … [--out grid.png] [--method M] [--inflation MODE] [--n 8]``.

``--method`` takes train.py's choices and picks the method's augmentation family (``--family`` names the
family itself); audit counts steps as training does (the last partial batch dropped; ``--keep-last`` counts it).
The CLI, not the ``loaders`` library, asks ``models`` which family a method uses.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import click

from loaders.audit import format_plan, format_report, plan_report, run_audit
from loaders.recipe.augment import FAMILY_NAMES
from loaders.recipe.mixture import parse_shards_args
from loaders.recipe.policy import DEFAULT_MODE, INFLATION_MODES
from loaders.recipe.resolve import AUG_CHOICES, resolve_recipe
from models import METHODS
from models.training.settings import Settings
from shards.base.errors import ConfigError, UserError
from shards.base.host import LOADER_DEVICES, LOADER_THREADS, resolve_device, resolve_loader_device
from shards.base.interrupt import interrupts, signal_of
from shards.base.progress import duration, progress
from shards.read.reader import ON_CORRUPT
from shards.remote.options import RemoteOptions
from shards.remote.options import click_options as remote_options

METHOD_FAMILIES = {name: cls.aug_family for name, cls in METHODS.items()}  # what train.py --method trains with
DEFAULT_METHOD = Settings.method
PREVIEW_OUT = "runs/preview.png"  # runs/ is ignored by git: a preview never lands in the checkout's tracked tree


def augmentation_family(method: str | None, family: str | None) -> str:
    """The augmentation family of ``--method`` (train.py's default when neither is given), or ``--family``;
    both given and disagreeing: one line."""
    if family is None:
        return METHOD_FAMILIES[method or DEFAULT_METHOD]
    if method is not None and METHOD_FAMILIES[method] != family:
        raise ConfigError(
            f"--method {method} trains with the {METHOD_FAMILIES[method]} augmentation family, not --family "
            f"{family}; give one of the two (--method as train.py takes it)"
        )
    return family


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Plan, audit and preview training mixtures."""


def num_threads_option(f):
    """``--num-threads`` as train.py spells it, with its default (``shards.base.host.LOADER_THREADS``); the old
    spelling ``--threads`` is still accepted (hidden from the help) so that existing scripts keep working."""
    f = click.option("--threads", "old_threads", type=click.IntRange(1), hidden=True)(f)
    return click.option(
        "--num-threads", default=LOADER_THREADS, show_default=True, type=click.IntRange(1), help="DALI CPU threads"
    )(f)


def recipe_options(f):
    """The options that choose a recipe, shared by audit and preview (as train.py names them)."""
    options = [
        click.option(
            "--shards",
            "shards",
            multiple=True,
            required=True,
            help="DIR[:WEIGHT] or URL[:WEIGHT] (s3://, gs://, http(s)://; repeatable) or mix.yaml",
        ),
        click.option(
            "--method",
            type=click.Choice(tuple(METHODS)),
            default=None,
            help=f"the train.py --method whose augmentation to use (default {DEFAULT_METHOD}, as train.py): "
            + ", ".join(f"{m} {f}" for m, f in METHOD_FAMILIES.items()),
        ),
        click.option(
            "--family",
            type=click.Choice(FAMILY_NAMES),
            default=None,
            help="the augmentation family itself, instead of --method",
        ),
        click.option(
            "--inflation",
            type=click.Choice(INFLATION_MODES),
            default=DEFAULT_MODE,
            show_default=True,
            help="AdaInf policy: adainf (the release's recipe), none, vanilla, or auto (this project's "
            "extrapolation); weights you wrote still win",
        ),
        click.option(
            "--aug",
            "--preset",
            "aug",
            default="auto",
            show_default=True,
            type=click.Choice(AUG_CHOICES),
            help="auto (the policy's preset), baseline / adainf (the family's presets), or a preset",
        ),
        click.option("--crop-min-scale", type=float, default=None, help="override the RandomResizedCrop minimum area"),
        click.option(
            "--jitter-strength", type=float, default=None, help="override the colour-jitter strength (x preset)"
        ),
        click.option("--jitter-p", type=float, default=None, help="override the colour-jitter probability"),
    ]
    for option in reversed(options):
        f = option(f)
    return remote_options(f)


def _recipe(shards, method, family, inflation, aug, crop_min_scale, jitter_strength, jitter_p, remote: RemoteOptions):
    return resolve_recipe(
        parse_shards_args(shards, remote),
        family=augmentation_family(method, family),
        inflation=inflation,
        aug=aug,
        overrides={"crop_min_scale": crop_min_scale, "jitter_strength": jitter_strength, "jitter_p": jitter_p},
    )


@main.command()
@recipe_options
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="Where the batches go: cpu or cuda[:N].")
@click.option(
    "--loader-device",
    type=click.Choice(LOADER_DEVICES),
    default="auto",
    show_default=True,
    help="Where the DALI pipeline runs (auto: gpu when --device is cuda).",
)
@num_threads_option
@click.option(
    "--drop-last/--keep-last",
    default=True,
    show_default=True,
    help="drop each epoch's last partial batch, as training does (its steps per epoch), or count it",
)
@click.option("--on-corrupt", type=click.Choice(ON_CORRUPT), default="error", show_default=True)
@click.option(
    "--plan-only",
    is_flag=True,
    help="show the policy's choices and the plan (per-source samples per epoch, batch shares, steps); "
    "do not run the pipeline",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def audit(
    epochs,
    batch_size,
    seed,
    device,
    loader_device,
    num_threads,
    old_threads,
    drop_last,
    on_corrupt,
    plan_only,
    as_json,
    **recipe_options,
):
    """Run the real pipeline over whole epochs and report what it delivers (--plan-only: the plan alone)."""
    try:
        with interrupts():
            check_devices(device, loader_device)
            remote = RemoteOptions.from_cli(
                recipe_options.pop("cache_dir"),
                recipe_options.pop("storage_option"),
                on_corrupt=on_corrupt,
                progress=not as_json,
            )
            recipe = _recipe(**recipe_options, remote=remote)
            plan = plan_report(recipe.mixture, batch_size=batch_size, epochs=epochs, seed=seed, drop_last=drop_last)
            if plan_only:
                report = {"recipe": recipe.to_dict(), "plan": plan, "epochs": []}
            else:
                planned = sum(e["samples"] for e in plan["epochs"])
                total = plan["total_steps"] * batch_size if drop_last else planned
                dropped = (
                    f" ({planned - total:,} samples in partial last batches dropped, as training does; "
                    "--keep-last counts them)"
                    if planned > total
                    else ""
                )
                if not as_json:
                    click.echo(
                        f"auditing {epochs} epoch(s): {total:,} samples in {plan['total_steps']:,} batches through "
                        f"the real loader{dropped}; an estimate follows after the first batches (--plan-only shows "
                        "the plan without running it)",
                        err=True,
                    )
                with progress(total, "audit", "samples", enabled=not as_json, summary_follows=True) as bar:
                    report = run_audit(
                        recipe.mixture,
                        recipe.aug,
                        batch_size=batch_size,
                        epochs=epochs,
                        seed=seed,
                        device=resolve_device(device),
                        loader_device=loader_device,
                        num_threads=old_threads or num_threads,
                        drop_last=drop_last,
                        on_corrupt=on_corrupt,
                        progress=Estimate(bar, total, quiet=as_json).update,
                    )
                report["recipe"] = recipe.to_dict()
                report["plan"] = plan
    except UserError as e:
        raise click.ClickException(flag_spelling(str(e))) from None
    except KeyboardInterrupt as e:
        name = signal.Signals(signal_of(e)).name
        click.echo(f"interrupted ({name}): nothing was written (audit only reads); run it again", err=True)
        sys.exit(128 + signal_of(e))
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(recipe.describe())
        click.echo(format_plan(plan))
        if not plan_only:
            click.echo(format_report(report))


class Estimate:
    """Passes progress on to ``bar`` and, once the first batches took ``after_s`` seconds, says (one line)
    how long the whole audit will take at that rate when that is more than ``min_s``."""

    def __init__(self, bar, total: int, *, quiet: bool = False, after_s: float = 5.0, min_s: float = 30.0):
        self.bar, self.total, self.quiet, self.after_s, self.min_s = bar, total, quiet, after_s, min_s
        self.n, self.t0, self.said = 0, None, False

    def update(self, n: int) -> None:
        self.bar.update(n)
        now = time.perf_counter()
        if self.t0 is None:  # from the first batch on: opening the sets and building the pipeline excluded
            self.t0 = now
            return
        self.n += n
        if self.said or self.quiet or now - self.t0 < self.after_s:
            return
        self.said = True
        rate = self.n / (now - self.t0)
        left = (self.total - self.n - n) / rate
        if left >= self.min_s:
            write = getattr(self.bar, "write", None) or (lambda m: click.echo(m, err=True))
            write(
                f"estimate: about {duration(left)} left at {rate:,.0f} samples/s (fewer --epochs or a smaller "
                "mixture shortens it)"
            )


def check_devices(device: str, loader_device: str) -> None:
    """A device this machine lacks, refused in one line naming the flag (before any work; ``shards.base.host``
    decides)."""
    resolve_loader_device(loader_device, resolve_device(device))


def flag_spelling(message: str) -> str:
    """The loaders' messages name Python arguments (``device='cpu'``); on the command line, the flags."""
    for arg, flag in (("loader_device", "--loader-device"), ("device", "--device"), ("num_threads", "--num-threads")):
        message = re.sub(rf"(?<![\w-]){arg}=['\"]?([\w:]+)['\"]?", rf"{flag} \1", message)
    return message


@main.command()
@recipe_options
@click.option(
    "--out",
    default=PREVIEW_OUT,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="the PNG to write (runs/ is ignored by git)",
)
@click.option("--n", "n", default=8, show_default=True, type=click.IntRange(1, 64), help="samples per kind")
@click.option("--seed", default=0, show_default=True, type=int, help="which samples and which augmentations")
@click.option("--scale", default=3, show_default=True, type=click.IntRange(1, 8), help="pixels per image pixel")
@num_threads_option
def preview(out, n, seed, scale, num_threads, old_threads, **recipe_options):
    """Draw real and generated samples as stored and as their augmented views under the recipe (CPU)."""
    from loaders.preview import preview as draw

    try:
        with interrupts():
            remote = RemoteOptions.from_cli(recipe_options.pop("cache_dir"), recipe_options.pop("storage_option"))
            recipe = _recipe(**recipe_options, remote=remote)
            if out == PREVIEW_OUT:
                Path(out).parent.mkdir(exist_ok=True)
            info = draw(recipe, out, n=n, seed=seed, scale=scale, num_threads=old_threads or num_threads)
    except UserError as e:
        raise click.ClickException(flag_spelling(str(e))) from None
    except KeyboardInterrupt as e:
        click.echo(f"interrupted ({signal.Signals(signal_of(e)).name}): {out} was not written", err=True)
        sys.exit(128 + signal_of(e))
    rows = ", ".join(f"{k} {v}" for k, v in info["rows"].items())
    click.echo(
        f"wrote {info['path']} ({info['size'][0]}x{info['size'][1]} px; samples: {rows}; preset {recipe.aug_name})"
    )


if __name__ == "__main__":
    main()
