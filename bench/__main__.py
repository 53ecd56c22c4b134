"""``python -m bench``: list the benchmarks, run one, or run them all.

    python -m bench                                  # list
    python -m bench end-to-end --quick               # one benchmark (its own --help lists its options)
    python -m bench all --quick                      # every benchmark with small sizes, then the report
    python -m bench all --quick --shards shards/cifar10-train:10 --shards shards/edm:1 --out-dir /tmp/b

Each benchmark is a click command in its own module (``bench/<name>.py``, ``main``) that prints a table
and writes one JSON file in the common shape (``bench.common.write_results``).
"""

from __future__ import annotations

import importlib
import sys
import time

import click

# name -> (module, one line); the order is the order `all` runs them in (cheap and independent first).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "loader": ("bench.loader", "loader only: two-view samples/s and host memory per backend"),
    "model": ("bench.model", "model ceiling: training steps/s on tensors already on the device, MFU"),
    "end-to-end": (
        "bench.end_to_end",
        "the real train step fed by the loader: samples/s, ratio to the ceiling, data wait",
    ),
    "scale": ("bench.scale", "planning and loader vs epoch size (50k/500k/1.5M) and number of sources"),
    "formats": ("bench.formats", "jpg vs png vs raw shards of the same images"),
    "feed": ("bench.feed", "host feed per batch on one core, the training thread's share, epoch boundary, set opening"),
    "pack": ("bench.pack", "packing speed of `shards pack`"),
}
# Commands outside `all`: the report, the inflation study (it trains models, see bench/inflation.py) and the
# cost of confirming shards at open (on sets you give it).
EXTRA: dict[str, tuple[str, str]] = {
    "report": ("bench.report", "PNG charts and a Markdown table from the JSON files"),
    "inflation": ("bench.inflation", "the AdaInf study: SimCLR under --inflation none/vanilla/adainf/auto (trains)"),
    "confirm": ("bench.confirm", "what confirming every shard's sha256 costs when a set is opened (your sets)"),
}
# Options `all` forwards to every benchmark that has them.
SHARED = ("quick", "shards", "out_dir", "device")


def load_command(name: str) -> click.Command:
    module, _ = EXTRA[name] if name in EXTRA else BENCHMARKS[name]
    try:
        command = importlib.import_module(module).main
        command.context_settings.setdefault("help_option_names", ["-h", "--help"])  # -h, also when run alone
        return command
    except (ImportError, AttributeError) as e:
        raise click.ClickException(f"benchmark {name!r} is not available ({module}: {e})") from None


class BenchGroup(click.Group):
    """Subcommands imported only when used, so one broken benchmark never hides the others."""

    def list_commands(self, ctx):
        return [*BENCHMARKS, *EXTRA, "all", "list"]

    def get_command(self, ctx, name):
        if name in ("all", "list"):
            return super().get_command(ctx, name)
        if name in BENCHMARKS or name in EXTRA:
            return load_command(name)
        return None


@click.group(cls=BenchGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx):
    """Throughput benchmarks: is the GPU saturated?"""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@cli.command("list")
def list_cmd():
    """List the benchmarks and whether each can be imported here."""
    for name, (module, line) in [*BENCHMARKS.items(), *EXTRA.items()]:
        try:
            _ = importlib.import_module(module).main
            state = ""
        except (ImportError, AttributeError) as e:
            state = f"  [not available: {e}]"
        click.echo(f"{name:<11} {line}{state}")
    click.echo(
        "\nRun one: python -m bench NAME [--quick] [--shards DIR[:W] ...] [--out-dir DIR]; "
        "all of them: python -m bench all --quick"
    )


@cli.command("all")
@click.option("--quick", is_flag=True, help="Small sizes: the whole suite in minutes.")
@click.option("--shards", "shards", multiple=True, metavar="DIR[:W]", help="Shard sets (default: the demo data).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON and charts go.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--only", default=None, help="Comma-separated subset of benchmarks to run.")
@click.option("--skip", default="", help="Comma-separated benchmarks to leave out.")
@click.option(
    "--fail-fast", is_flag=True, help="Stop at the first failing benchmark (default: run the rest, then fail)."
)
def all_cmd(quick, shards, out_dir, device, only, skip, fail_fast):
    """Run every benchmark (forwarding --quick/--shards/--out-dir/--device where accepted), then the report."""
    names = [n.strip() for n in only.split(",")] if only else list(BENCHMARKS)
    skipped = {n.strip() for n in skip.split(",") if n.strip()}
    unknown = [n for n in [*names, *skipped] if n not in BENCHMARKS]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}", param_hint="--only/--skip"
        )
    from bench.common import resolve_shards
    from shards.errors import UserError

    try:  # one data set for every benchmark: the user's, or the demo mixture built once
        shards = resolve_shards(shards)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    given = {"quick": quick, "shards": shards, "out_dir": out_dir, "device": device}
    failed = []
    for name in (n for n in names if n not in skipped):
        click.echo(f"== {name} ==", err=True)
        t0 = time.perf_counter()
        try:
            command = load_command(name)
            args = _forward(command, given)
            command.main(args=args, prog_name=f"python -m bench {name}", standalone_mode=False)
        except (click.ClickException, click.Abort) as e:
            msg = e.format_message() if isinstance(e, click.ClickException) else "aborted"
            click.echo(f"{name}: failed: {msg}", err=True)
            failed.append(name)
            if fail_fast:
                break
        click.echo(f"== {name}: {time.perf_counter() - t0:.0f} s ==", err=True)
    report = load_command("report")
    report_args = ["--results-dir", out_dir] if out_dir else []
    report.main(args=report_args, prog_name="python -m bench report", standalone_mode=False)
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


def _forward(command: click.Command, given: dict) -> list[str]:
    """The shared options this command declares, as command-line arguments."""
    accepted = {p.name: p for p in command.params}
    args: list[str] = []
    for key in SHARED:
        if key not in accepted:
            continue
        flag = next(o for o in accepted[key].opts if o.startswith("--"))
        value = given[key]
        if key == "quick":
            args += [flag] if value else []
        elif key == "shards":
            for s in value:
                args += [flag, s]
        elif value is not None:
            args += [flag, str(value)]
    return args


def main() -> int:
    return cli.main(prog_name="python -m bench")


if __name__ == "__main__":
    sys.exit(main())
