"""``python -m models export RUN_DIR --out backbone.pt [--projector]``: the trained backbone as a plain
state dict (``models.training.export`` does the work)."""

from __future__ import annotations

import click

from shards.base.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Work with trained models: export the backbone of a train.py run."""


@main.command()
@click.argument("run", metavar="RUN_DIR")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="The file to write: the backbone's state dict (torch.save), loadable with weights_only=True.",
)
@click.option(
    "--projector",
    is_flag=True,
    help="Also write the projection head's state dict beside --out (backbone.pt -> backbone-projector.pt).",
)
def export(run, out, projector):
    """Write the trained backbone of RUN_DIR (a run directory or a checkpoint .pt) as a plain state dict.

    \b
    Load it into the project's backbone, or torchvision's ResNet-18 with the CIFAR stem:
      net = models.build_backbone("resnet18")
      net.load_state_dict(torch.load("backbone.pt", weights_only=True))
    """
    from models.training.export import export_run, load_snippet

    try:
        done = export_run(run, out, projector=projector)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"wrote {done.backbone_file}: the {done.backbone} backbone of {done.method} at step {done.step} "
        f"({done.parameters:,} parameters) from {done.checkpoint}"
    )
    if done.projector_file is not None:
        click.echo(f"wrote {done.projector_file}: the {done.method} projector")
    click.echo("load it with:\n" + "\n".join("  " + line for line in load_snippet(done).splitlines()))


if __name__ == "__main__":
    main(prog_name="python -m models")
