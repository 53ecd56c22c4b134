"""``python -m shards pack|verify|info|demo|fuzz``."""

from __future__ import annotations

import shlex
import signal
import sys
from functools import wraps
from pathlib import Path

import click

from shards.base.errors import UserError
from shards.base.interrupt import interrupts, signal_of
from shards.format.schema import FORMATS, PACK_FORMATS
from shards.packing.sources import LAYOUTS
from shards.remote.options import RemoteOptions, click_options
from shards.remote.url import is_url


def _location(text: str):
    """A command-line shard set: a URL stays text (never a local path), anything else is a Path."""
    return text if is_url(text) else Path(text)


def _command_line() -> str:
    return "python -m shards " + shlex.join(sys.argv[1:])


def _clean_errors(kept: str = "nothing was changed"):
    """A UserError (bad input) becomes one line on stderr and exit status 1, never a traceback; Ctrl-C or
    SIGTERM (see ``shards.base.interrupt``) one line saying what was kept (``kept``, formatted with the
    command's arguments) and how to continue, exit 128 + the signal (130 for Ctrl-C)."""

    def wrap(fn):
        @wraps(fn)
        def run(*args, **kwargs):
            try:
                with interrupts():
                    return fn(*args, **kwargs)
            except UserError as e:
                raise click.ClickException(str(e)) from None
            except KeyboardInterrupt as e:
                signum = signal_of(e)
                click.echo(f"interrupted ({signal.Signals(signum).name}): {kept.format(**kwargs)}", err=True)
                sys.exit(128 + signum)

        return run

    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Pack images into WebDataset shards (with DALI indexes and a manifest), check them, describe them."""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    help="Output folder for NAME-00000.tar …, *.idx, manifest.json; or an s3:// / gs:// URL (packed locally "
    "under --cache-dir, then uploaded: tars and indexes first, the manifest last).",
)
@click.option("--kind", type=click.Choice(["real", "generated"]), default="real", show_default=True)
@click.option("--name", default="", help="Source name (tar prefix, manifest name). Default: the --out folder's name.")
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Split recorded in the manifest; also picks CIFAR train/test batches.",
)
@click.option("--subdir", default="", help="Folder inside SRC (or inside the archive) to pack, e.g. cifar10/train.")
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="auto",
    show_default=True,
    help="Force ImageFolder (labels from folders), flat (unlabelled) or webdataset (KEY.jpg + KEY.cls labels).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(PACK_FORMATS),
    default="auto",
    show_default=True,
    help="auto never loses information: JPEG or PNG inputs pass through unchanged (a JPEG/PNG mix is "
    "stored as PNG), arrays become raw pixels (≤ 64×64) or PNG. jpg re-encodes non-JPEG inputs "
    "lossily (a warning says so); raw = uint8 HWC pixels, no decode cost.",
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality, when JPEG-encoding."
)
@click.option("--shard-size", type=click.IntRange(min=1), default=10000, show_default=True, help="Samples per tar.")
@click.option(
    "--shuffle-seed",
    type=int,
    default=None,
    help="Pack in a seeded shuffled order (well-mixed shards); --limit/--per-class then take a random subset.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Pack at most N images.")
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    help="At most N images per class (data-scarce CIFAR-10: 500).",
)
@click.option("--keep-labels", is_flag=True, help="Keep labels of a --kind generated source (default: -1).")
@click.option("--fid", type=float, default=None, help="FID of a generated set, stored for the weighting policy.")
@click.option(
    "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Encoding processes (0 = one per core)."
)
@click.option("--strict", is_flag=True, help="Fail on any unreadable / empty / non-image input instead of skipping it.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the shard set in --out (its manifest's files only, once the new set is complete).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, a line per tenth elsewhere).")
@click_options
@_clean_errors("nothing was written and {out} is as it was (a shard set already there is intact); pack again")
def pack(
    src,
    out,
    kind,
    name,
    split,
    subdir,
    layout,
    fmt,
    quality,
    shard_size,
    shuffle_seed,
    limit,
    per_class,
    keep_labels,
    fid,
    workers,
    strict,
    overwrite,
    quiet,
    cache_dir,
    storage_option,
):
    """Pack SRC (ImageFolder tree, folder of images, CIFAR pickles, .npz/.npy, or a .tar/.tar.gz of one) into shards."""
    from shards.packing.pack import PackConfig
    from shards.packing.pack import pack as run_pack

    out = _location(out)
    cfg = PackConfig(
        out=Path(".") if is_url(out) else out,
        name=name,
        kind=kind,
        split=split,
        format=fmt,
        quality=quality,
        shard_size=shard_size,
        shuffle_seed=shuffle_seed,
        limit=limit,
        per_class=per_class,
        keep_labels=keep_labels,
        fid=fid,
        workers=workers,
        strict=strict,
        overwrite=overwrite,
        progress=not quiet,
        command=_command_line(),
    )
    if is_url(out):
        from shards.packing.upload import pack_to_url

        remote = RemoteOptions.from_cli(cache_dir, storage_option, progress=not quiet)
        result, sent = pack_to_url(src, cfg, out, remote, subdir=subdir, layout=layout)
        click.echo(result.summary())
        click.echo(f"output:  {out} ({sent['files']} files, {sent['bytes'] / 2**20:,.1f} MB uploaded, manifest last)")
    else:
        result = run_pack(src, cfg, subdir=subdir, layout=layout)
        click.echo(result.summary())
        click.echo(f"output:  {out}")
    for w in result.warnings:
        click.echo(w, err=True)


@main.command()
@click.argument("dirs", nargs=-1, required=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Processes (0 = one per core).")
@click.option("--no-decode", is_flag=True, help="Skip decoding every image (structure, index and checksums only).")
@click_options
@_clean_errors("nothing was changed (verify only reads); run it again")
def verify(dirs, workers, no_decode, cache_dir, storage_option):
    """Re-read every shard with the loader's own checks: tar structure, index, every image (structure, decode,
    size), labels, each sample's recorded sha256, unique keys, counts and sha256 against the manifest."""
    from shards.remote.stage import local_set
    from shards.verify import verify_dir

    remote = RemoteOptions.from_cli(cache_dir, storage_option, on_corrupt="skip")  # verify reports every problem
    bad = 0
    for given in map(_location, dirs):
        d = local_set(given, remote, "verify") if is_url(given) else given  # a URL: its staged copy
        problems = verify_dir(d, workers=workers, decode=not no_decode)
        for p in problems:
            click.echo(p)
        if problems:
            bad += 1
        else:
            from shards.format.manifest import Manifest

            m = Manifest.load(d)
            click.echo(
                f"{given}: OK ({m.count} samples in {len(m.shards)} shard(s)"
                f"{'' if no_decode else ', every image decoded'}{f', staged in {d}' if is_url(given) else ''})"
            )
    if bad:
        click.echo(f"{bad} of {len(dirs)} shard set(s) have problems", err=True)
        sys.exit(1)


@main.command()
@click.argument("dirs", nargs=-1, required=True)
@click_options
@_clean_errors()
def info(dirs, cache_dir, storage_option):
    """A table of shard sets (folders or URLs, whose manifests are read remotely): name, kind, count, shards,
    format, classes, bytes, fid."""
    from shards.verify import INFO_COLUMNS, format_table, info_rows

    remote = RemoteOptions.from_cli(cache_dir, storage_option)
    click.echo(format_table(info_rows(list(map(_location, dirs)), remote.storage_options), INFO_COLUMNS))


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Writes OUT/real, OUT/generated, OUT/test.")
@click.option("--size", type=click.Choice(["small", "default"]), default="default", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0)
@click.option("--overwrite", is_flag=True, help="Replace demo shard sets already in --out.")
@_clean_errors("the demo sets already complete in {out} are kept, a set being written was left out; run it again")
def demo(out, size, seed, fmt, workers, overwrite):
    """Make the built-in procedural demo data set (no download): real, generated and test shard sets."""
    from shards.packing.demo import SIZES, make_demo

    n_real, n_gen, n_test = SIZES[size]
    sets = make_demo(
        out,
        n_real=n_real,
        n_generated=n_gen,
        n_test=n_test,
        seed=seed,
        format=fmt,
        workers=workers,
        overwrite=overwrite,
        progress=True,
        command=_command_line(),
    )
    for name, r in sets.items():
        click.echo(f"{out / name}: {r.manifest.count} samples, kind {r.manifest.kind}, split {r.manifest.split}")


@main.command()
@click.option("--cases", type=click.IntRange(min=1), default=338, show_default=True, help="26 of each damage kind.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--work", type=click.Path(path_type=Path), default=None, help="Working folder (default: a temporary one)."
)
@click.option(
    "--in-process", is_flag=True, help="Run the commands in this interpreter (fast; what the test suite does)."
)
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True, help="Seconds per command.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report here.")
@_clean_errors()
def fuzz(cases, seed, work, in_process, timeout, json_path):
    """Damage tiny packed sets at random (seeded) and hold verify, the audit and train.py to the contract."""
    import json
    import tempfile

    from bench.fuzz import fuzz as run_fuzz

    with tempfile.TemporaryDirectory(prefix="shards-fuzz-") as tmp:
        report = run_fuzz(cases, seed, Path(work or tmp), in_process=in_process, timeout=timeout, log=click.echo)
    if json_path:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    click.echo(
        f"{report['cases']} cases, {report['commands_run']} commands, {report['failed']} failed, {report['seconds']} s"
    )
    if report["failed"]:
        sys.exit(1)
