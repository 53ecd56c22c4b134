"""Train a contrastive model on a weighted mixture of real and generated images (AdaInf, ICLR 2024).

    python train.py --shards data/cifar10-train --shards data/edm --eval-shards data/cifar10-test
    python train.py --demo                                   # built-in demo mixture, a few minutes on CPU
    python train.py --config runs/NAME/config.yaml --seed 1  # a saved recipe, flags override it
    python train.py ... --print-config                       # the fully resolved recipe, then exit
    python train.py --resume runs/NAME                       # continue after an interruption
    python train.py --eval-only --checkpoint runs/NAME/ckpt-last.pt
    python -m models export runs/NAME --out backbone.pt      # the trained backbone as a plain state dict
    torchrun --nproc_per_node 8 train.py ...                 # DDP (NCCL on GPU, gloo on CPU)

Reads top to bottom: settings → runtime → data (shards → mixture + inflation policy → recipe) → loader →
method (backbone, heads, loss) → trainer (optimizer, schedule, precision, compile, DDP) → fit → report. The
pieces live in ``models.training``; the path of a batch is told in ``docs/design.md``.

Run directory (``--out``, default ``runs/<method>-<timestamp>``): ``config.yaml`` (settings and what they
resolved to), ``metrics.jsonl`` (one JSON object per line, ``kind`` train / eval / final), TensorBoard
events under ``tb/``, ``ckpt-last.pt`` (and ``ckpt-STEP.pt`` with ``--keep-every``).
"""

from __future__ import annotations

import datetime as _dt
import signal
from contextlib import contextmanager
from pathlib import Path

import click

from loaders.batch.table import SampleTable
from models.training import (
    Evaluator,
    RunDir,
    Trainer,
    aug_family,
    build_method_for,
    format_result,
    plan_data,
    plan_eval,
    read_records,
    seed_everything,
    setup_runtime,
)
from models.training.checkpoint import CKPT_LAST, load_checkpoint
from models.training.data import check_sources, data_notes, describe_resolved, remote_options
from models.training.metrics import Metrics
from models.training.rundir import check_out
from models.training.runtime import plan_runtime
from models.training.settings import (
    DEMO_CPU_DEFAULTS,
    DEMO_DEFAULTS,
    RESUME_MAY_CHANGE,
    Settings,
    click_options,
    read_yaml,
)
from models.training.trainer import Interrupted, resolved_run, schedule, warmup_note
from shards.base.errors import ConfigError, UserError
from shards.base.host import resolve_device
from shards.base.interrupt import interrupts, signal_of


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Settings from a YAML file (e.g. a run's config.yaml); command-line flags override it.",
)
@click.option("--print-config", is_flag=True, help="Print the fully resolved configuration and exit (no training).")
@click_options
@click.pass_context
def main(ctx: click.Context, config_file, print_config, **options) -> None:
    """Train a contrastive model on a weighted mixture of real and generated shards (AdaInf).

    The trained backbone, as a plain state dict: python -m models export RUN_DIR --out backbone.pt
    """
    try:
        with interrupts():  # Ctrl-C / SIGTERM anywhere: one line saying what was kept, exit 128 + signal
            run(ctx, config_file, print_config, options)
    except Interrupted as e:
        click.echo(str(e), err=True)
        ctx.exit(e.exit_code)
    except KeyboardInterrupt as e:  # reading settings or a checkpoint, building the demo data: before any run
        signum = signal_of(e)
        click.echo(
            f"{signal.Signals(signum).name} before the run started: nothing was trained (demo shard sets already "
            "built are kept); run the command again",
            err=True,
        )
        ctx.exit(128 + signum)
    except UserError as e:  # one line for anything the user can fix; programming errors keep their traceback
        err = click.ClickException(str(e))
        err.exit_code = getattr(e, "exit_code", 1)
        raise err from None


@contextmanager
def on_interrupt(what: str):
    """A Ctrl-C / SIGTERM in the block becomes ``Interrupted`` saying ``what`` (what was kept, how to go on)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as e:
        signum = signal_of(e)
        raise Interrupted(f"{signal.Signals(signum).name} {what}", signum) from None


def run(ctx, config_file, print_config, options) -> dict:
    # -- settings: defaults < --config FILE < flags; --resume takes the checkpoint's, --demo fills small ones
    given = {k for k in options if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    base = read_yaml(config_file) if config_file else {}
    settings = Settings.from_dict({**base, **{k: v for k, v in options.items() if k in given}})
    given |= set(base)
    settings.validate()
    if settings.eval_only:
        with on_interrupt("during --eval-only: nothing was recorded; run the command again"):
            return evaluate_checkpoint(settings, given)
    ckpt = None
    if settings.resume:
        settings, ckpt = resume_settings(settings, given)
        if not print_config and finished(settings, ckpt):
            return {}
    elif settings.demo:
        settings = demo_settings(settings, given)
    if settings.out is None:
        settings = settings.replace(
            out=str(Path("runs") / f"{settings.method}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        )
    continues = ckpt is not None and Path(settings.out).resolve() == Path(settings.resume).resolve().parent
    startup = (
        "during start-up: nothing was trained, the run is as it was; continue with "
        f"`python train.py --resume {settings.out}`"
        if continues
        else "during start-up: nothing was trained or written; run the command again"
    )
    with on_interrupt(startup):
        # -- where and how to compute (device, precision, DDP); --print-config touches no GPU
        runtime = (
            plan_runtime(settings.device, settings.precision)
            if print_config
            else setup_runtime(settings.device, settings.precision)
        )
        if runtime.master and not print_config:
            check_out(Path(settings.out), continues)  # before any work: never start inside another run's directory

        # -- data: shards → mixture, weighted by the inflation policy → augmentation recipe → the DALI loader
        data = plan_data(settings, runtime.world_size, aug_family(settings.method))
        if runtime.master:
            _log(data.reading_line())  # opening large sets the first time builds their index caches: a wait
        loader = data.train_loader(settings, runtime)

        # -- method: backbone + projector/predictor + loss (+ online probe); resolved record of the whole run
        seed_everything(settings.seed + runtime.rank)
        method = build_method_for(settings, data.num_classes)
        resolved = {**resolved_run(settings, runtime, loader.steps_per_epoch, method.cfg), **describe_resolved(data)}
        if ckpt is not None:
            resolved["data_changes"] = check_sources(
                ckpt.get("resolved", {}).get("mixture", []), resolved["mixture"], settings.allow_data_change
            )
        doc = {"settings": settings.to_dict(), "resolved": resolved}
        if print_config:
            import yaml

            click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
            return {}

        # -- trainer: optimizer, schedule, precision, compile, DDP; then the run
        trainer = Trainer(settings, runtime, loader, method)
        if ckpt is not None:
            try:
                trainer.load_state_dict(ckpt)  # on any number of processes dividing the global batch
            except ConfigError as e:  # a loader state this release cannot continue (another version, batch size)
                raise ConfigError(f"--resume {settings.resume}: {e}") from None
        # the evaluator opens its sets now: a bad set fails before training
        evaluator = Evaluator(data, settings, runtime) if data.eval_shards else None
    run_dir = RunDir(
        settings.out, resume_step=trainer.step_count if ckpt else None, master=runtime.master, continues=continues
    )
    started = (
        startup
        if continues
        else f"during start-up: nothing was trained; {settings.out} holds no checkpoint: remove it and run the "
        "command again"
    )
    try:
        with on_interrupt(started):
            run_dir.write_config(doc)
            if runtime.master:
                _log(data.recipe.describe())
                _log(
                    f"{settings.method}/{settings.backbone} on {runtime.device} x{runtime.world_size} "
                    f"({runtime.precision}), {trainer.total_steps} steps of batch {settings.batch_size} ("
                    + (f"{loader.local_batch_size} a process; " if runtime.distributed else "")
                    + f"{loader.steps_per_epoch} steps/epoch of {data.epoch_size} samples), "
                    f"lr {resolved['lr']:.4g}; run directory {settings.out}"
                    + (f"; resumed at step {trainer.step_count}" if ckpt else "")
                )
                shortened = warmup_note(settings, trainer.total_steps, trainer.warmup_steps)
                notes = data_notes(data, settings) + ([shortened] if shortened else [])
                for line in notes + (resume_notes(trainer, ckpt) if ckpt else []):
                    _log(line)
                for line in resolved.get("data_changes", []):
                    _log(f"warning: {line} (--allow-data-change): the epoch plan differs from the checkpoint's")
        final = trainer.fit(run_dir, evaluator, resolved, last_good=Path(settings.resume) if ckpt else None)
    finally:
        run_dir.close()
    if final:
        _log(format_result(final, trainer.step_count))
        if final.get("corrupt_skipped"):
            _log(
                f"{final['corrupt_skipped']} corrupt training sample(s) were skipped (--on-corrupt skip), first: "
                f"{', '.join(map(SampleTable.shown_key, final['corrupt_keys']))}"
            )
        if (settings.demo or settings.compare_random) and runtime.master:
            with on_interrupt(f"during the random-init comparison: the run is complete and saved in {settings.out}"):
                compare_with_random_init(settings, final)
    if runtime.master:
        _log(
            f"done: {trainer.step_count} steps, checkpoint at {Path(settings.out) / CKPT_LAST}; export the "
            f"backbone with `python -m models export {settings.out} --out backbone.pt`"
        )
    return final


def finished(settings: Settings, ckpt: dict) -> bool:
    """For ``--resume``: True (after one line saying so) when the checkpoint's run has nothing left to do;
    a ConfigError when the asked ``--steps`` / ``--epochs`` end before the checkpoint's step. A run whose
    training is complete but whose final evaluation was not recorded (interrupted) goes on: it evaluates."""
    per_epoch = ckpt.get("resolved", {}).get("steps_per_epoch")
    if per_epoch is None and settings.epochs:
        return False  # an old checkpoint: decided once the loader is built (the loop then does nothing)
    total, _ = schedule(settings, per_epoch or 1)
    done = int(ckpt["step"])
    run = Path(settings.resume).parent
    if done > total:
        asked = f"--epochs {settings.epochs} ({total} steps)" if settings.epochs else f"--steps {total}"
        raise ConfigError(
            f"{asked}: the checkpoint {settings.resume} is already at step {done}; give more than {done} steps "
            f"to train further, or evaluate it with `python train.py --eval-only --checkpoint {settings.resume}`"
        )
    if done < total:
        return False
    finals = [r for r in read_records(run, "final") if r.get("step") == done]
    evaluates = bool(settings.eval_shards or ckpt.get("resolved", {}).get("eval_shards"))
    if evaluates and not finals:
        _log(f"{run}: training is complete ({done} steps) but no final evaluation was recorded; running it now")
        return False
    result = f"; {format_result(finals[-1], done)}" if finals else ""
    _log(
        f"{run}: the run is complete ({done} of {total} steps{result}); nothing to do. To train it further give "
        f"--steps above {done} (e.g. --steps {2 * done}): the learning rate then follows warm-up + cosine over the "
        f"new total from step {done} on; `python train.py --eval-only --checkpoint {run}` evaluates it again"
    )
    return True


def resume_notes(trainer: Trainer, ckpt: dict) -> list[str]:
    """A line when the resumed run's schedule differs from the checkpoint's (another --steps / --epochs)."""
    old = ckpt.get("resolved", {}).get("total_steps")
    if old is None or old == trainer.total_steps:
        return []
    try:
        was = float(ckpt["optimizer"]["param_groups"][0]["lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        was = float("nan")
    now = trainer.optimizer.param_groups[0]["lr"]
    return [
        f"schedule: {trainer.total_steps} steps instead of the checkpoint's {old}: the learning rate follows "
        f"warm-up + cosine over {trainer.total_steps} steps (warm-up {trainer.warmup_steps}) from step "
        f"{trainer.step_count} on, {was:.4g} -> {now:.4g} now"
    ]


def resume_settings(settings: Settings, given: set[str]) -> tuple[Settings, dict]:
    """The checkpoint's settings, with only the options a resumed run may change taken from the command line."""
    path, ckpt = load_checkpoint(settings.resume)
    saved = Settings.from_dict(ckpt["settings"])
    clash = [k for k in sorted(given) if k not in RESUME_MAY_CHANGE and getattr(settings, k) != getattr(saved, k)]
    if clash:
        k = clash[0]
        raise click.UsageError(
            f"--{k.replace('_', '-')} {getattr(settings, k)!r} differs from the checkpoint's "
            f"{getattr(saved, k)!r}; a resumed run keeps its settings (may change: "
            f"{', '.join(RESUME_MAY_CHANGE)})"
        )
    keep = {k: getattr(settings, k) for k in given if k in RESUME_MAY_CHANGE and k != "resume"}
    keep.setdefault("out", str(path.parent))  # the run the checkpoint belongs to
    if "steps" in keep and "epochs" not in keep:
        keep["epochs"] = None
    if "epochs" in keep and "steps" not in keep:
        keep["steps"] = None
    return saved.replace(**keep, resume=str(path), demo=False), ckpt


def demo_settings(settings: Settings, given: set[str]) -> Settings:
    """Build the demo mixture if missing and point the settings at it; DEMO_DEFAULTS fill what was not given."""
    from shards.packing.demo import make_demo

    data = Path(settings.demo_data)
    parts = {name: data / name for name in ("real", "generated", "test")}
    if not all((p / "manifest.json").is_file() for p in parts.values()):
        _log(f"building the demo mixture in {data} ...")
        make_demo(data)
    defaults = dict(DEMO_DEFAULTS)
    if resolve_device(settings.device) == "cpu":
        defaults.update(DEMO_CPU_DEFAULTS)
    changes = {k: v for k, v in defaults.items() if k not in given}
    for key, value in (
        ("shards", (str(parts["real"]), str(parts["generated"]))),
        ("eval_shards", (str(parts["test"]),)),
        ("train_labels", (str(parts["real"]),)),
        ("out", str(Path("runs") / f"demo-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")),
    ):
        if key not in given:
            changes[key] = value
    return settings.replace(**changes)


def evaluate_checkpoint(settings: Settings, given: set[str]) -> dict:
    """kNN and offline linear probe of a checkpoint's backbone on --eval-shards (default: the run's)."""
    from models import build_method

    if not settings.checkpoint:
        raise click.UsageError("--eval-only needs --checkpoint PATH (a .pt file or a run directory)")
    path, ckpt = load_checkpoint(settings.checkpoint)
    run_info = ckpt.get("resolved", {})
    saved = Settings.from_dict(ckpt["settings"])
    # evaluation knobs: the run's own (crop size, kNN k, limits ...) unless given on this command line
    settings = saved.replace(
        **{k: getattr(settings, k) for k in given if k not in ("eval_only", "resume")}, eval_only=True, resume=None
    )
    data = plan_eval(
        settings.eval_shards if "eval_shards" in given else tuple(run_info.get("eval_shards", ())),
        settings.train_labels if "train_labels" in given else tuple(run_info.get("train_labels", ())),
        remote=remote_options(settings),
    )
    runtime = setup_runtime(settings.device, settings.precision)
    cfg = dict(run_info.get("method_config") or {})
    method = build_method(saved.method, **cfg) if cfg else build_method_for(saved, data.num_classes)
    method.load_state_dict(ckpt["model"])
    result = Evaluator(data, settings, runtime)(method.to(runtime.device), probe_epochs=settings.probe_epochs)
    result["checkpoint"] = str(path)
    if runtime.master:
        metrics = Metrics(path.parent, tensorboard=False)
        metrics.write("eval_only", int(ckpt["step"]), **result)
        metrics.close()
        _log(format_result(result, int(ckpt["step"]), of=str(path)))
    return result


def compare_with_random_init(settings: Settings, final: dict) -> None:
    """The same evaluation of a randomly initialised backbone (same seed): what training has to beat."""
    import torch

    _log("measuring a randomly initialised backbone for comparison ...")
    data = plan_eval(settings.eval_shards, settings.train_labels, remote=remote_options(settings))
    runtime = setup_runtime(settings.device, settings.precision)
    torch.manual_seed(settings.seed)  # the run's seed: the initialisation training started from
    method = build_method_for(settings, data.num_classes).to(runtime.device)
    base = Evaluator(data, settings, runtime)(method, probe_epochs=settings.probe_epochs)
    metrics = Metrics(Path(settings.out), tensorboard=False)
    metrics.write("baseline_random_init", 0, **base)
    metrics.close()
    click.echo(f"{'backbone':<22}{'kNN':>8}{'linear probe':>14}")
    for name, r in (("random init", base), (f"trained ({settings.steps} steps)", final)):
        click.echo(f"{name:<22}{r['knn_acc']:>8.2%}{r.get('linear_probe_acc', float('nan')):>14.2%}")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


if __name__ == "__main__":
    main()
