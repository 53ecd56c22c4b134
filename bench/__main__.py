"""``python -m bench``: list the benchmarks, run one, or run them all.

    python -m bench                                  # list
    python -m bench loader --quick                   # one benchmark (``-h`` lists its options)
    python -m bench all --quick --shards data/cifar10-train:10 --shards data/edm:1 --out-dir /tmp/b

Each throughput suite is a module ``bench/<name>.py`` over ``bench.harness`` with a click command ``main``; the
study that trains models lives apart, in ``bench/studies/``.
"""

from __future__ import annotations

import importlib
import sys
import time

import click

from bench.harness import CONTEXT

# name -> (module, one line); the order `all` runs them in (cheap and independent first)
BENCHMARKS = {
    "loader": ("bench.loader", "loader only: two-view samples/s and memory per backend, a batch-size sweep"),
    "model": ("bench.model", "model ceiling: training steps/s on tensors already on the device, MFU, compiled"),
    "end-to-end": ("bench.end_to_end", "the train step fed by the loader: samples/s, ratio to the ceiling, data wait"),
    "scale": ("bench.scale", "planning and the loader vs epoch size (50k/500k/1.5M) and number of sources"),
    "formats": ("bench.formats", "jpg vs png vs raw shards of the same images"),
    "feed": ("bench.feed", "the host feed on one core, the training thread's share, epoch boundary, opening sets"),
    "pack": ("bench.pack", "packing speed of `shards pack`"),
}
# outside `all`: the report, the AdaInf study (it trains), confirming shards at open (on the user's sets), staging
# remote sets (a server and a disk of the sets' size) and the fault injection (it checks behaviour, not throughput)
EXTRA = {
    "report": ("bench.report", "PNG charts and a Markdown table from the JSON files"),
    "inflation": ("bench.studies.inflation", "the AdaInf study: SimCLR under each --inflation mode (trains models)"),
    "confirm": ("bench.confirm", "what confirming every shard's sha256 costs when a set is opened (your sets)"),
    "stage": ("bench.stage", "remote sets from a local server: staging MB/s, time to the first batch, confirmation"),
    "fuzz": ("bench.fuzz", "fault injection: random damage of tiny sets, every command held to its contract"),
}
SHARED = ("quick", "shards", "out_dir", "device")  # what `all` forwards to every benchmark that has it


def load_command(name: str) -> click.Command:
    module = {**BENCHMARKS, **EXTRA}[name][0]
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
        return load_command(name) if name in BENCHMARKS or name in EXTRA else None


@click.group(cls=BenchGroup, invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def cli(ctx):
    """Throughput benchmarks: is the GPU saturated?"""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@cli.command("list")
def list_cmd():
    """List the benchmarks and whether each can be imported here."""
    for name, (module, line) in {**BENCHMARKS, **EXTRA}.items():
        try:
            state = "" if hasattr(importlib.import_module(module), "main") else "  [no main]"
        except (ImportError, AttributeError) as e:
            state = f"  [not available: {e}]"
        click.echo(f"{name:<11} {line}{state}")
    click.echo(
        "\nRun one: python -m bench NAME [--quick] [--shards DIR[:W] ...]; all of them: python -m bench all --quick"
    )


@cli.command("all")
@click.option("--quick", is_flag=True, help="small sizes: the whole suite in minutes")
@click.option("--shards", multiple=True, metavar="DIR[:W]", help="shard sets (default: the demo data)")
@click.option("--out-dir", type=click.Path(file_okay=False), help="where the JSON and charts go")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--only", help="comma-separated benchmarks to run")
@click.option("--skip", default="", help="comma-separated benchmarks to leave out")
@click.option(
    "--fail-fast", is_flag=True, help="stop at the first failing benchmark (default: run the rest, then fail)"
)
def all_cmd(quick, shards, out_dir, device, only, skip, fail_fast):
    """Every benchmark (forwarding --quick/--shards/--out-dir/--device where accepted), then the report."""
    from bench.harness import QUICK_RESULTS_DIR, comma_list, resolve_shards
    from shards.base.errors import UserError

    if quick and not out_dir:  # a smoke run's JSON, report and charts never land in the committed bench/results
        out_dir = str(QUICK_RESULTS_DIR)

    names = comma_list(only, str, tuple(BENCHMARKS), "--only") if only else list(BENCHMARKS)
    skipped = comma_list(skip, str, tuple(BENCHMARKS), "--skip") if skip else []
    try:  # one data set for every benchmark: the user's, or the demo mixture built once
        given = {"quick": quick, "shards": resolve_shards(shards), "out_dir": out_dir, "device": device}
    except UserError as e:
        raise click.ClickException(str(e)) from None
    failed = []
    for name in (n for n in names if n not in skipped):
        click.echo(f"== {name} ==", err=True)
        t0 = time.perf_counter()
        try:
            command = load_command(name)
            command.main(
                args=shared_option_args(command, given), prog_name=f"python -m bench {name}", standalone_mode=False
            )
        except (click.ClickException, click.Abort) as e:
            why = e.format_message() if isinstance(e, click.ClickException) else "aborted"
            click.echo(f"{name}: failed: {why}", err=True)
            failed.append(name)
            if fail_fast:
                break
        click.echo(f"== {name}: {time.perf_counter() - t0:.0f} s ==", err=True)
    args = ["--results-dir", out_dir] if out_dir else []
    load_command("report").main(args=args, prog_name="python -m bench report", standalone_mode=False)
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


def shared_option_args(command: click.Command, given: dict) -> list[str]:
    """The shared options this command declares, as command-line arguments."""
    accepted = {p.name: p for p in command.params}
    args: list[str] = []
    for key in (k for k in SHARED if k in accepted and given[k] not in (None, False)):
        flag = next(o for o in accepted[key].opts if o.startswith("--"))
        values = [] if key == "quick" else given[key] if key == "shards" else [given[key]]
        args += [flag] if key == "quick" else [a for v in values for a in (flag, str(v))]
    return args


def main() -> int:
    return cli.main(prog_name="python -m bench")


if __name__ == "__main__":
    sys.exit(main())
