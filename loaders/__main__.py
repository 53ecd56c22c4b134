"""``python -m loaders audit --shards … [--epochs N] [--batch-size B] [--seed S] [--json]``."""
from __future__ import annotations

import json

import click

from shards.manifest import ShardError

from .audit import format_report, run_audit
from .mixture import parse_shards_args
from .recipe import AUG_CHOICES, INFLATION_CHOICES, resolve_recipe


@click.group()
def main():
    """Plan and audit training mixtures."""


@main.command()
@click.option("--shards", "shards", multiple=True, required=True, help="DIR[:WEIGHT] (repeatable) or mix.yaml")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--method", default="simclr", show_default=True,
              help="the method whose augmentation family applies (simclr/mocov2plus symmetric, byol/barlow asymmetric)")
@click.option("--aug", "--preset", "aug", default="default", show_default=True, type=click.Choice(AUG_CHOICES),
              help="augmentation preset, or default/adainf (the method's family), or auto (chosen from the mixture)")
@click.option("--inflation", type=click.Choice(INFLATION_CHOICES), default=None,
              help="apply the AdaInf policy: none | vanilla | adainf | auto (weights you wrote still win)")
@click.option("--crop-min-scale", type=float, default=None, help="override the RandomResizedCrop minimum area")
@click.option("--jitter-strength", type=float, default=None, help="override the colour-jitter strength (x preset)")
@click.option("--jitter-p", type=float, default=None, help="override the colour-jitter probability")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--drop-last/--keep-last", default=False, show_default=True,
              help="drop the last partial batch (as training does) or count it")
@click.option("--on-corrupt", type=click.Choice(["error", "skip"]), default="error", show_default=True)
@click.option("--plan-only", is_flag=True, help="show the policy's choices and the plan; do not run the pipeline")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
def audit(shards, epochs, batch_size, seed, method, aug, inflation, crop_min_scale, jitter_strength, jitter_p,
          device, threads, drop_last, on_corrupt, plan_only, as_json):
    """Run the real pipeline over whole epochs and report what it delivers."""
    from tqdm import tqdm

    try:
        recipe = resolve_recipe(parse_shards_args(shards), aug=aug, inflation=inflation, method=method,
                                overrides={"crop_min_scale": crop_min_scale, "jitter_strength": jitter_strength,
                                           "jitter_p": jitter_p})
        if plan_only:
            report = {"recipe": recipe.to_dict(), "epochs": []}
        else:
            with tqdm(total=None, unit="sample", disable=as_json, leave=False) as bar:
                report = run_audit(recipe.mixture, recipe.aug, batch_size=batch_size, epochs=epochs, seed=seed,
                                   device=device, num_threads=threads, drop_last=drop_last, on_corrupt=on_corrupt,
                                   progress=bar.update)
            report["recipe"] = recipe.to_dict()
    except (ShardError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(recipe.describe())
        if not plan_only:
            click.echo(format_report(report))


if __name__ == "__main__":
    main()
