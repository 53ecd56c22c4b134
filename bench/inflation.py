"""The evidence: SimCLR under the four inflation settings with the same step budget, kNN and linear probe.

    python -m bench.inflation --quick                               # built-in demo data, a few minutes on CPU
    python -m bench.inflation --real shards/cifar10-train --generated shards/edm \\
        --eval-shards shards/cifar10-test --scarce-real shards/cifar10-500pc --steps 20000 --batch-size 512

For each *setting* (``full``: ``--real`` + ``--generated``; ``scarce``: ``--scarce-real`` + ``--generated``,
when given) and each *mode* of ``--modes`` (``none``, ``vanilla``, ``adainf``, ``auto``; see
``loaders.policy``), one ``train.train`` run with the shard sets given WITHOUT weights, so the inflation
policy picks the weights and, with ``aug="auto"``, the augmentation. Everything else is the same for every
run: method (SimCLR), backbone, steps, batch size, learning rate, warm-up and seed. Runs live in
``--work-dir`` (default: a temporary folder, deleted at the end), never in the repository.

Per setting, a randomly initialised backbone (``train.random_init_baseline``, same seed) is evaluated the
same way: what training has to beat. The kNN / linear-probe features of the labelled training images come
from ``--train-labels`` (default: each setting's real set), capped by ``--knn-train-limit``; the same
test images (``--eval-shards``, capped by ``--eval-limit``) score every run.

Writes ``bench/results/<host>-<date>-inflation.json`` (the common shape; one row per run with the weights
and augmentation the policy chose, samples/s, data-wait fraction, final kNN / online-probe / offline
linear-probe accuracy and the curve of evaluations over steps from the run's ``metrics.jsonl``),
``inflation-<host>.png`` (kNN accuracy over steps, one panel per setting, one line per mode) and
``inflation-<host>.md`` (the Markdown table that is also printed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import mmap
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from bench.common import RESULTS_DIR, demo_cache_dir, host_kind, pick_device, resolve_shards, write_results

MODES = ("none", "vanilla", "adainf", "auto")
DEFAULT_JITTER = 0.8  # the SimCLR preset's brightness = contrast = saturation; strength is a multiplier of it


@dataclass(frozen=True)
class StudyConfig:
    modes: tuple[str, ...] = MODES
    method: str = "simclr"
    backbone: str = "resnet18"
    steps: int = 2000
    batch_size: int = 512
    warmup_steps: int = 200
    lr: float | None = None  # per 256 samples; None: the method's default
    eval_every: int = 500
    knn_k: int = 200
    knn_train_limit: int = 0
    eval_limit: int = 0
    probe_epochs: int = 100
    image_size: int = 32
    num_threads: int = 2
    seed: int = 0
    device: str = "auto"
    baseline: bool = True


# Smallest sizes that still show learning: the convnet at full resolution, a few hundred steps.
QUICK = dict(backbone="convnet", steps=300, batch_size=128, warmup_steps=30, eval_every=100, knn_k=50,
             knn_train_limit=2000, eval_limit=1000, probe_epochs=30)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------
def _labels_prefix(directory: str, n: int) -> set[int]:
    """The class labels among the first ``n`` samples of a shard set, in shard order (``.cls`` members)."""
    from shards.index import read_index
    from shards.manifest import Manifest

    m = Manifest.load(directory)
    seen: set[int] = set()
    left = n
    for info in m.shards:
        if left <= 0:
            break
        idx = read_index(Path(directory) / info.index)
        take = min(left, len(idx))
        with open(Path(directory) / info.file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for off, size in zip(idx.offsets["cls"][:take], idx.sizes["cls"][:take]):
                seen.add(int(mm[int(off):int(off) + int(size)]))
        left -= take
    return seen


def check_limit(directory: str, limit: int, option: str) -> None:
    """``train.py`` caps evaluation at the first ``limit`` images in shard order; a class-sorted set (as
    CIFAR-10's test split is packed) would then be scored on a few classes only. Refuse that."""
    from shards.manifest import Manifest

    m = Manifest.load(directory)
    if not limit or limit >= m.count or not m.labelled:
        return
    present = {int(k) for k, v in (m.label_counts or {}).items() if v and int(k) >= 0}
    got = _labels_prefix(directory, limit)
    if present and got != present:
        missing = sorted(present - got)
        raise click.UsageError(
            f"{option} {limit}: the first {limit} images of {directory} hold only classes {sorted(got)} "
            f"(the set is ordered by class; {len(missing)} classes would never be scored); "
            f"use {option} 0 (all {m.count}) or a shuffled shard set")


@dataclass(frozen=True)
class Setting:
    name: str  # "full" | "scarce" | "demo"
    real: str
    generated: str
    train_labels: str


def demo_data(demo_dir: str | None) -> tuple[str, str, str]:
    """(real, generated, test) of the built-in demo mixture (built once, cached)."""
    from shards.demo import make_demo

    paths = resolve_shards((), demo_dir)
    root = Path(paths[0].rsplit(":", 1)[0]).parent
    if not (root / "test" / "manifest.json").is_file():
        make_demo(root, overwrite=True)
    return str(root / "real"), str(root / "generated"), str(root / "test")


# ---------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------
def settings_for(setting: Setting, mode: str, eval_shards: str, cfg: StudyConfig, out: Path):
    import train

    return train.Settings(
        shards=(setting.real, setting.generated),  # no weights: the policy decides
        eval_shards=(eval_shards,), train_labels=(setting.train_labels,),
        inflation=mode, aug="auto", method=cfg.method, backbone=cfg.backbone, steps=cfg.steps,
        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed, device=cfg.device,
        image_size=cfg.image_size, num_threads=cfg.num_threads, eval_every=cfg.eval_every, knn_k=cfg.knn_k,
        knn_train_limit=cfg.knn_train_limit, eval_limit=cfg.eval_limit, probe_epochs=cfg.probe_epochs,
        log_every=log_every(cfg), ckpt_every=0, out=str(out), progress=False)


def log_every(cfg: StudyConfig) -> int:
    """A log interval that divides the eval interval: train.py restarts its interval clock after an
    evaluation but not its step / wait counters, so an evaluation between two log steps would inflate that
    interval's samples/s and data-wait figures."""
    return math.gcd(cfg.eval_every, 50) if cfg.eval_every else min(50, cfg.steps)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def throughput(records: list[dict], batch_size: int) -> tuple[float | None, float | None]:
    """(samples/s, data-wait fraction) over the whole run from the per-interval ``train`` records (eval
    time excluded, as train.py excludes it): Σ samples / Σ interval seconds, wait weighted by time."""
    samples = seconds = waited = 0.0
    last = 0
    for r in (r for r in records if r.get("kind") == "train"):
        steps = r["step"] - last
        last = r["step"]
        if steps <= 0 or not r.get("samples_per_s"):
            continue
        dt = steps * batch_size / r["samples_per_s"]
        samples += steps * batch_size
        seconds += dt
        waited += r.get("data_wait", 0.0) * dt
    if seconds <= 0:
        return None, None
    return round(samples / seconds, 1), round(waited / seconds, 4)


def curve(records: list[dict]) -> list[dict]:
    """[{step, knn_acc, online_probe_acc[, linear_probe_acc]}] from the eval records and the final one."""
    points = []
    for r in records:
        if r.get("kind") in ("eval", "final"):
            p = {"step": r["step"], "knn_acc": r["knn_acc"], "online_probe_acc": r.get("online_probe_acc")}
            if "linear_probe_acc" in r:
                p["linear_probe_acc"] = r["linear_probe_acc"]
            points.append(p)
    return points


def chosen_augmentation(decision: dict) -> dict:
    """crop min area, jitter strength (multiplier) and probability the run used, from the policy decision."""
    from loaders.policy import PRESET_KNOBS

    knobs = {**PRESET_KNOBS[decision["aug_preset"]], **decision.get("aug_overrides", {})}
    return {"aug_preset": decision["aug_preset"], "crop_min_scale": knobs["crop_min_scale"],
            "jitter_strength": knobs["jitter_strength"], "jitter_p": knobs["jitter_p"]}


def run_one(setting: Setting, mode: str, eval_shards: str, cfg: StudyConfig, work: Path) -> dict:
    import yaml

    import train

    run_dir = work / f"{setting.name}-{mode}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    s = settings_for(setting, mode, eval_shards, cfg, run_dir)
    t0 = time.perf_counter()
    final = train.train(s)
    wall = time.perf_counter() - t0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]
    records = read_metrics(run_dir)
    sps, wait = throughput(records, cfg.batch_size)
    by_kind = {src["kind"]: src for src in resolved["mixture"]}
    decision = resolved["inflation"]
    return {
        "backend": f"train-{mode}", "setting": setting.name, "variant": setting.name, "mode": mode,
        "weights": {"real": by_kind["real"]["weight"], "generated": by_kind["generated"]["weight"]},
        **chosen_augmentation(decision), "effective_size": decision["effective_size"],
        "epoch_size": resolved["epoch_size"], "epochs": round(cfg.steps / resolved["steps_per_epoch"], 3),
        "real": setting.real, "generated": setting.generated, "fid": by_kind["generated"].get("fid"),
        "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "lr": resolved["lr"],
        "device": resolved["device"], "precision": resolved["precision"],
        "samples_per_s": sps, "data_wait_fraction": wait, "wall_s": round(wall, 1),
        "knn_acc": final["knn_acc"], "online_probe_acc": final["online_probe_acc"],
        "linear_probe_acc": final.get("linear_probe_acc"), "eval_samples": final["eval_samples"],
        "knn_train_samples": final["knn_train_samples"], "curve": curve(records),
        "reasons": decision["reasons"],
    }


def run_baseline(setting: Setting, eval_shards: str, cfg: StudyConfig, work: Path) -> dict:
    import train

    s = settings_for(setting, "none", eval_shards, cfg, work / f"{setting.name}-random-init")
    t0 = time.perf_counter()
    r = train.random_init_baseline(s)
    return {"backend": "random-init", "setting": setting.name, "variant": setting.name, "mode": "random-init",
            "weights": None,
            "steps": 0, "batch_size": None, "seed": cfg.seed, "samples_per_s": None,
            "wall_s": round(time.perf_counter() - t0, 1), "knn_acc": r["knn_acc"],
            "online_probe_acc": None, "linear_probe_acc": r.get("linear_probe_acc"),
            "eval_samples": r["eval_samples"], "knn_train_samples": r["knn_train_samples"],
            "curve": [{"step": 0, "knn_acc": r["knn_acc"]}]}


# ---------------------------------------------------------------------------------------------------
# Output: table and chart
# ---------------------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| setting | mode | weights real:gen | crop min | jitter (strength, p) | steps | kNN % | "
            "linear probe % | online probe % | samples/s | data wait |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        w = r.get("weights")
        weights = "-" if not w else f"{w['real']:g}:{w['generated']:g}"
        crop = "-" if r.get("crop_min_scale") is None else f"{r['crop_min_scale']:g}"
        jitter = ("-" if r.get("jitter_p") is None
                  else f"{r['jitter_strength']:g}, {r['jitter_p']:g}")
        sps = "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:,.0f}"
        wait = "-" if r.get("data_wait_fraction") is None else f"{r['data_wait_fraction']:.0%}"
        lines.append(f"| {r['setting']} | {r['mode']} | {weights} | {crop} | {jitter} | {r['steps']} | "
                     f"{_pct(r['knn_acc'])} | {_pct(r.get('linear_probe_acc'))} | {_pct(r.get('online_probe_acc'))} "
                     f"| {sps} | {wait} |")
    return "\n".join(lines) + "\n"


def draw_chart(rows: list[dict], path: Path, title: str) -> Path:
    """kNN accuracy over steps: one panel per setting, one line per mode, random init as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], settings):
        for r in (r for r in rows if r["setting"] == name):
            if r["mode"] == "random-init":
                ax.axhline(100 * r["knn_acc"], color="grey", ls="--", lw=1, label="random init")
                continue
            pts = [(p["step"], 100 * p["knn_acc"]) for p in r["curve"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=r["mode"])
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("kNN accuracy (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------
def _modes(value: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise click.BadParameter(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(MODES)}",
                                 param_hint="--modes")
    return tuple(dict.fromkeys(modes))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--real", type=click.Path(file_okay=False), help="Labelled real shard set (full setting).")
@click.option("--generated", type=click.Path(file_okay=False), help="Generated shard set (both settings).")
@click.option("--eval-shards", type=click.Path(file_okay=False), help="Labelled test shard set.")
@click.option("--scarce-real", type=click.Path(file_okay=False),
              help="A small labelled real set (e.g. 500 per class): adds the data-scarce setting.")
@click.option("--train-labels", type=click.Path(file_okay=False),
              help="Labelled set giving kNN / probe training features for every setting "
                   "(default: each setting's real set).")
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma-separated inflation modes.")
@click.option("--backbone", type=click.Choice(["resnet18", "convnet"]), default=None,
              help="Backbone (default resnet18; convnet with --quick).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Steps per run, the same for every run.")
@click.option("--batch-size", type=click.IntRange(2), default=None)
@click.option("--warmup-steps", type=click.IntRange(0), default=None)
@click.option("--lr", type=float, default=None, help="Learning rate per 256 samples (default: the method's).")
@click.option("--eval-every", type=click.IntRange(0), default=None, help="Steps between kNN evaluations (the curve).")
@click.option("--knn-train-limit", type=click.IntRange(0), default=None, help="Cap on labelled training images (0: all).")
@click.option("--eval-limit", type=click.IntRange(0), default=None, help="Cap on test images (0: all).")
@click.option("--probe-epochs", type=click.IntRange(0), default=None, help="Offline linear-probe epochs.")
@click.option("--image-size", type=click.IntRange(8), default=32, show_default=True)
@click.option("--num-threads", type=click.IntRange(1), default=2, show_default=True, help="DALI CPU threads.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--no-baseline", is_flag=True, help="Skip the random-init baseline rows.")
@click.option("--quick", is_flag=True, help="CPU-sized: convnet, 300 steps of 128, small evaluation caps.")
@click.option("--demo-dir", type=click.Path(file_okay=False), default=None,
              help="Where the demo data is built / found when no --real is given.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the run directories here (default: a temporary folder, deleted at the end).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON, PNG and table go.")
def main(real, generated, eval_shards, scarce_real, train_labels, modes, backbone, steps, batch_size, warmup_steps,
         lr, eval_every, knn_train_limit, eval_limit, probe_epochs, image_size, num_threads, seed, device,
         no_baseline, quick, demo_dir, work_dir, out_dir):
    """SimCLR under none / vanilla / adainf / auto inflation, same step budget: kNN and linear-probe accuracy."""
    from shards.manifest import Manifest, ShardError

    given = dict(backbone=backbone, steps=steps, batch_size=batch_size, warmup_steps=warmup_steps,
                 eval_every=eval_every, knn_train_limit=knn_train_limit, eval_limit=eval_limit,
                 probe_epochs=probe_epochs)
    base = dict(QUICK) if quick else {}
    base.update({k: v for k, v in given.items() if v is not None})
    cfg = StudyConfig(modes=_modes(modes), lr=lr, image_size=image_size, num_threads=num_threads, seed=seed,
                      device=pick_device(device), baseline=not no_baseline, **base)
    if cfg.warmup_steps > cfg.steps // 10:
        cfg = dataclasses.replace(cfg, warmup_steps=cfg.steps // 10)  # train.py's own cap, stated in settings

    try:
        if real is None:
            if generated or eval_shards or scarce_real:
                raise click.UsageError("--generated / --eval-shards / --scarce-real need --real as well "
                                       "(or give none of them for the demo data)")
            real, generated, eval_shards = demo_data(demo_dir)
            full_name = "demo"
        else:
            missing = [o for o, v in (("--generated", generated), ("--eval-shards", eval_shards)) if not v]
            if missing:
                raise click.UsageError(f"--real needs {' and '.join(missing)} too")
            full_name = "full"
        kinds = {d: Manifest.load(d) for d in filter(None, (real, generated, eval_shards, scarce_real, train_labels))}
        for opt, d, want in (("--real", real, "real"), ("--generated", generated, "generated"),
                             ("--scarce-real", scarce_real, "real"), ("--eval-shards", eval_shards, "real"),
                             ("--train-labels", train_labels, "real")):
            if d and kinds[d].kind != want:
                raise click.UsageError(f"{opt} {d}: a {kinds[d].kind} shard set; give a {want} one")
        check_limit(eval_shards, cfg.eval_limit, "--eval-limit")
        settings = [Setting(full_name, real, generated, train_labels or real)]
        if scarce_real:
            settings.append(Setting("scarce", scarce_real, generated, train_labels or scarce_real))
        for st in settings:
            check_limit(st.train_labels, cfg.knn_train_limit, "--knn-train-limit")
    except ShardError as e:
        raise click.ClickException(str(e)) from None

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bench-inflation-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for st in settings:
            if cfg.baseline:
                click.echo(f"== {st.name}: random-init baseline ==", err=True)
                rows.append(run_baseline(st, eval_shards, cfg, work))
            for mode in cfg.modes:
                click.echo(f"== {st.name}: {mode} ({cfg.steps} steps of {cfg.batch_size}) ==", err=True)
                try:
                    row = run_one(st, mode, eval_shards, cfg, work)
                except ShardError as e:
                    raise click.ClickException(str(e)) from None
                click.echo(f"   kNN {_pct(row['knn_acc'])} %, linear probe {_pct(row['linear_probe_acc'])} %, "
                           f"{row['samples_per_s']} samples/s, {row['wall_s']} s", err=True)
                rows.append(row)
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)

    study = {**dataclasses.asdict(cfg), "modes": list(cfg.modes), "eval_shards": eval_shards,
             "settings": [dataclasses.asdict(st) for st in settings],
             "command": "python -m bench.inflation " + " ".join(sys.argv[1:])}
    path = write_results("inflation", study, rows, out_dir)
    out = Path(out_dir) if out_dir else RESULTS_DIR
    host = host_kind()
    title = (f"SimCLR/{cfg.backbone}, {cfg.steps} steps of {cfg.batch_size}, seed {cfg.seed}, {host}; "
             f"kNN (k={cfg.knn_k}) on {rows[-1]['eval_samples']} test images")
    chart = draw_chart(rows, out / f"inflation-{host}.png", title)
    table = markdown_table(rows)
    from shards.manifest import atomic_write_text

    md = atomic_write_text(out / f"inflation-{host}.md", f"{title}\n\n{table}\nCommand: `{study['command']}`\n")
    click.echo(table)
    click.echo(f"wrote {path}, {chart} and {md}", err=True)


if __name__ == "__main__":
    main()
