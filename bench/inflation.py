"""The evidence: SimCLR under the four inflation modes, the same step budget, several seeds, mean ± std.

    python -m bench.inflation --quick                               # built-in demo data, minutes on a CPU
    python -m bench.inflation --real data/cifar10-train --generated data/edm --eval-shards data/cifar10-test \\
        --scarce-real data/cifar10-500pc --seeds 0,1,2 --steps 20000 --batch-size 512 --device cuda

For each *setting* (``full``: ``--real`` + ``--generated``; ``scarce``: ``--scarce-real`` + ``--generated``,
when given), each *mode* of ``--modes`` (``none``, ``vanilla``, ``adainf``, ``auto``; see
``loaders.policy``) and each seed of ``--seeds``, one run of ``train.py`` itself (a subprocess running the
command a user runs, so the study measures the product, not a copy of it) with the shard sets given
WITHOUT weights: the inflation policy picks the weights and the augmentation. Everything else is the same
for every run: method, backbone, steps, batch size, learning rate, warm-up, evaluation. The seed changes
the model's initialisation, the epoch plans and every augmentation draw. Runs live in ``--work-dir``
(default: a temporary folder, deleted at the end), never in the repository.

Per setting and seed, the randomly initialised backbone is evaluated the same way (``--compare-random``
of that setting's first run): what training has to beat. kNN / linear-probe training features come from
``--train-labels`` (default: each setting's real set), capped by ``--knn-train-limit`` (a fixed random
subset); the same test images (``--eval-shards``, capped by ``--eval-limit``) score every run.

Writes ``bench/results/<host>-<date>-inflation.json`` (the common shape: one row per run with what the
policy chose, samples/s, final kNN / online-probe / offline linear-probe accuracy and the curve over steps;
``summary`` rows with mean ± std per arm), ``inflation-<host>.png`` (final accuracies per arm with error
bars, and kNN over steps) and ``inflation-<host>.md`` (the tables and which differences exceed the spread).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from bench.common import RESULTS_DIR, host_kind, pick_device, resolve_shards, write_results
from models.engine.config import DEMO_DEFAULTS

MODES = ("none", "vanilla", "adainf", "auto")
METRICS = ("knn_acc", "linear_probe_acc", "online_probe_acc")
TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"


@dataclass(frozen=True)
class StudyConfig:
    modes: tuple[str, ...] = MODES
    seeds: tuple[int, ...] = (0, 1, 2)
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
    device: str = "auto"
    baseline: bool = True


# Smallest sizes that still show learning: train.py --demo's run and evaluation sizes on the convnet, with an
# evaluation every 100 steps for the curve, two seeds.
_DEMO_SIZES = ("steps", "batch_size", "warmup_steps", "knn_k", "knn_train_limit", "eval_limit", "probe_epochs")
QUICK = dict(backbone="convnet", **{k: DEMO_DEFAULTS[k] for k in _DEMO_SIZES}, eval_every=100, seeds=(0, 1))


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
# One run: train.py in a subprocess
# ---------------------------------------------------------------------------------------------------
def train_args(
    setting: Setting, mode: str, seed: int, eval_shards: str, cfg: StudyConfig, out: Path, baseline: bool
) -> list[str]:
    """The train.py command line of one run: the shard sets without weights, so the policy decides."""
    opts = dict(
        inflation=mode,
        aug="auto",
        method=cfg.method,
        backbone=cfg.backbone,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        seed=seed,
        device=cfg.device,
        image_size=cfg.image_size,
        num_threads=cfg.num_threads,
        eval_every=cfg.eval_every,
        knn_k=cfg.knn_k,
        knn_train_limit=cfg.knn_train_limit,
        eval_limit=cfg.eval_limit,
        probe_epochs=cfg.probe_epochs,
        log_every=log_every(cfg),
        ckpt_every=0,
        out=str(out),
    )
    args = [
        "--shards",
        setting.real,
        "--shards",
        setting.generated,
        "--eval-shards",
        eval_shards,
        "--train-labels",
        setting.train_labels,
        "--no-progress",
    ] + (["--compare-random"] if baseline else [])
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def log_every(cfg: StudyConfig) -> int:
    """A log interval that divides the eval interval, so no interval's samples/s straddles an evaluation."""
    return math.gcd(cfg.eval_every, 50) if cfg.eval_every else min(50, cfg.steps)


def read_metrics(run_dir: Path) -> list[dict]:
    from models.engine import read_records

    return read_records(run_dir)


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


def chosen_augmentation(resolved: dict) -> dict:
    """What the run's first view used: crop min area, jitter (b, c, s, h) and its probability."""
    v = resolved["augmentation"]["views"][0]
    return {
        "aug_preset": resolved["inflation"]["aug_preset"],
        "crop_min_scale": v["crop_scale"][0],
        "jitter": [v["brightness"], v["contrast"], v["saturation"], v["hue"]],
        "jitter_p": v["jitter_p"],
    }


def run_one(
    setting: Setting, mode: str, seed: int, eval_shards: str, cfg: StudyConfig, work: Path, baseline: bool
) -> list[dict]:
    """Train one arm with one seed; its row (and the random-init row when ``baseline``)."""
    import yaml

    run_dir = work / f"{setting.name}-{mode}-seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(TRAIN_PY), *train_args(setting, mode, seed, eval_shards, cfg, run_dir, baseline)],
        cwd=TRAIN_PY.parent,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise click.ClickException(f"{setting.name}/{mode}/seed {seed}: train.py failed ({last})")
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]
    records = read_metrics(run_dir)
    final = next(r for r in records if r["kind"] == "final")
    sps, wait = throughput(records, cfg.batch_size)
    by_kind = {src["kind"]: src for src in resolved["mixture"]}
    decision = resolved["inflation"]
    rows = [
        {
            "backend": f"train-{mode}",
            "setting": setting.name,
            "variant": f"{setting.name}-seed{seed}",
            "mode": mode,
            "seed": seed,
            "weights": {"real": by_kind["real"]["weight"], "generated": by_kind["generated"]["weight"]},
            **chosen_augmentation(resolved),
            "effective_size": decision["effective_size"],
            "epoch_size": resolved["epoch_size"],
            "epochs": round(cfg.steps / resolved["steps_per_epoch"], 3),
            "real": setting.real,
            "generated": setting.generated,
            "fid": by_kind["generated"].get("fid"),
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": resolved["lr"],
            "device": resolved["device"],
            "precision": resolved["precision"],
            "samples_per_s": sps,
            "data_wait_fraction": wait,
            "wall_s": round(wall, 1),
            **{k: final.get(k) for k in METRICS},
            "eval_samples": final["eval_samples"],
            "knn_train_samples": final["knn_train_samples"],
            "curve": curve(records),
            "reasons": decision["reasons"],
        }
    ]
    base = next((r for r in records if r["kind"] == "baseline_random_init"), None)
    if base is not None:
        rows.insert(
            0,
            {
                "backend": "random-init",
                "setting": setting.name,
                "variant": f"{setting.name}-seed{seed}",
                "mode": "random-init",
                "seed": seed,
                "weights": None,
                "steps": 0,
                "batch_size": None,
                "samples_per_s": None,
                "knn_acc": base["knn_acc"],
                "online_probe_acc": None,
                "linear_probe_acc": base.get("linear_probe_acc"),
                "eval_samples": base["eval_samples"],
                "knn_train_samples": base["knn_train_samples"],
                "curve": [{"step": 0, "knn_acc": base["knn_acc"]}],
            },
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Aggregation: mean ± std per arm, and which differences exceed the seed-to-seed spread
# ---------------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> list[dict]:
    """One ``summary`` row per (setting, mode): mean and sample standard deviation over seeds per metric."""
    arms: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        arms.setdefault((r["setting"], r["mode"]), []).append(r)
    out = []
    for (setting, mode), runs in arms.items():
        row = {
            "backend": "summary",
            "setting": setting,
            "mode": mode,
            "variant": f"{setting}-{mode}",
            "seeds": [r["seed"] for r in runs],
            "n": len(runs),
        }
        for key in ("weights", "crop_min_scale", "jitter", "jitter_p", "steps"):
            if key in runs[0]:
                row[key] = runs[0][key]
        for m in METRICS:
            values = [r[m] for r in runs if r.get(m) is not None]
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
                row[m] = {"mean": round(mean, 5), "std": round(std, 5), "values": values}
        sps = [r["samples_per_s"] for r in runs if r.get("samples_per_s")]
        row["samples_per_s"] = round(sum(sps) / len(sps), 1) if sps else None
        out.append(row)
    return out


def compare(summary: list[dict], metric: str = "linear_probe_acc") -> list[dict]:
    """Every pair of trained modes within a setting: the difference of means, and whether it exceeds the
    spread, i.e. |Δ| > std₁ + std₂ (the seed-to-seed standard deviations added: a plain, conservative
    reading for 3 seeds, not a significance test)."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        arms = [r for r in summary if r["setting"] == setting and r["mode"] != "random-init" and metric in r]
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                delta = a[metric]["mean"] - b[metric]["mean"]
                spread = a[metric]["std"] + b[metric]["std"]
                out.append(
                    {
                        "setting": setting,
                        "metric": metric,
                        "a": a["mode"],
                        "b": b["mode"],
                        "delta": round(delta, 5),
                        "spread": round(spread, 5),
                        "exceeds": abs(delta) > spread,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------------
# Output: tables and chart
# ---------------------------------------------------------------------------------------------------
def _pm(stat: dict | None) -> str:
    return "-" if not stat else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown_table(summary: list[dict]) -> str:
    head = (
        "| setting | mode | weights real:gen | crop min | jitter (b, c, s, h), p | seeds | kNN % | "
        "linear probe % | online probe % | samples/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary:
        w = r.get("weights")
        weights = "-" if not w else f"{w['real']:g}:{w['generated']:g}"
        crop = "-" if r.get("crop_min_scale") is None else f"{r['crop_min_scale']:g}"
        jitter = "-" if r.get("jitter") is None else f"({', '.join(f'{x:g}' for x in r['jitter'])}), {r['jitter_p']:g}"
        sps = "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:,.0f}"
        lines.append(
            f"| {r['setting']} | {r['mode']} | {weights} | {crop} | {jitter} | {r['n']} | "
            f"{_pm(r.get('knn_acc'))} | {_pm(r.get('linear_probe_acc'))} | {_pm(r.get('online_probe_acc'))} "
            f"| {sps} |"
        )
    return "\n".join(lines) + "\n"


def comparison_lines(pairs: list[dict]) -> str:
    lines = []
    for p in pairs:
        verdict = "exceeds" if p["exceeds"] else "within"
        lines.append(
            f"- {p['setting']}: {p['a']} − {p['b']} = {100 * p['delta']:+.2f} points of "
            f"{p['metric'].replace('_acc', '')} ({verdict} the spread {100 * p['spread']:.2f})"
        )
    return "\n".join(lines) + "\n"


def draw_chart(rows: list[dict], summary: list[dict], path: Path, title: str) -> Path:
    """Per setting: final linear-probe and kNN accuracy per mode (mean, error bar = std over seeds, dots =
    seeds) and kNN over steps (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in summary))
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 8), squeeze=False)
    for col, name in enumerate(settings):
        arms = [r for r in summary if r["setting"] == name]
        ax = axes[0][col]
        for k, (metric, colour) in enumerate((("linear_probe_acc", "C0"), ("knn_acc", "C1"))):
            xs = [i + (k - 0.5) * 0.3 for i, a in enumerate(arms) if metric in a]
            stats = [a[metric] for a in arms if metric in a]
            ax.errorbar(
                xs,
                [100 * s["mean"] for s in stats],
                yerr=[100 * s["std"] for s in stats],
                fmt="o",
                color=colour,
                capsize=4,
                label=metric.replace("_acc", "").replace("_", " "),
            )
            for x, s in zip(xs, stats):
                ax.plot([x] * len(s["values"]), [100 * v for v in s["values"]], ".", color=colour, alpha=0.4)
        ax.set_xticks(range(len(arms)), [a["mode"] for a in arms])
        ax.set_title(f"{name}: final accuracy (mean ± std over seeds)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for mode in dict.fromkeys(r["mode"] for r in rows if r["setting"] == name and r["mode"] != "random-init"):
            runs = [r for r in rows if r["setting"] == name and r["mode"] == mode]
            steps = sorted({p["step"] for r in runs for p in r["curve"]})
            means = [
                100
                * sum(p["knn_acc"] for r in runs for p in r["curve"] if p["step"] == st)
                / max(1, sum(1 for r in runs for p in r["curve"] if p["step"] == st))
                for st in steps
            ]
            ax.plot(steps, means, marker="o", ms=3, label=mode)
        ax.set_xlabel("step")
        ax.set_ylabel("kNN accuracy (%), mean over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------
def _csv(value: str, cast, name: str, allowed=None) -> tuple:
    try:
        items = tuple(dict.fromkeys(cast(v.strip()) for v in value.split(",") if v.strip()))
    except ValueError:
        items = ()
    bad = [m for m in items if allowed and m not in allowed]
    if bad or not items:
        raise click.BadParameter(
            f"{value!r}: give a comma-separated list" + (f" of {', '.join(allowed)}" if allowed else ""),
            param_hint=name,
        )
    return items


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--real", type=click.Path(file_okay=False), help="Labelled real shard set (full setting).")
@click.option("--generated", type=click.Path(file_okay=False), help="Generated shard set (both settings).")
@click.option("--eval-shards", type=click.Path(file_okay=False), help="Labelled test shard set.")
@click.option(
    "--scarce-real",
    type=click.Path(file_okay=False),
    help="A small labelled real set (e.g. 500 per class): adds the data-scarce setting.",
)
@click.option(
    "--train-labels",
    type=click.Path(file_okay=False),
    help="Labelled set giving kNN / probe training features for every setting (default: each setting's real set).",
)
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma-separated inflation modes.")
@click.option("--seeds", default=None, help="Comma-separated seeds, one run per seed and arm [0,1,2; --quick 0,1].")
@click.option("--method", default="simclr", show_default=True, help="The contrastive method of every run.")
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "convnet"]),
    default=None,
    help="Backbone (default resnet18; convnet with --quick).",
)
@click.option("--steps", type=click.IntRange(1), default=None, help="Steps per run, the same for every run.")
@click.option("--batch-size", type=click.IntRange(2), default=None)
@click.option("--warmup-steps", type=click.IntRange(0), default=None)
@click.option("--lr", type=float, default=None, help="Learning rate per 256 samples (default: the method's).")
@click.option("--eval-every", type=click.IntRange(0), default=None, help="Steps between kNN evaluations (the curve).")
@click.option(
    "--knn-train-limit", type=click.IntRange(0), default=None, help="Cap on labelled training images (0: all)."
)
@click.option("--eval-limit", type=click.IntRange(0), default=None, help="Cap on test images (0: all).")
@click.option("--probe-epochs", type=click.IntRange(0), default=None, help="Offline linear-probe epochs.")
@click.option("--image-size", type=click.IntRange(8), default=32, show_default=True)
@click.option("--num-threads", type=click.IntRange(1), default=2, show_default=True, help="DALI CPU threads.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--no-baseline", is_flag=True, help="Skip the random-init baseline rows.")
@click.option("--quick", is_flag=True, help="CPU-sized: convnet, 300 steps of 128, two seeds, small evaluation caps.")
@click.option(
    "--demo-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo data is built / found when no --real is given.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the run directories here (default: a temporary folder, deleted at the end).",
)
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON, PNG and tables go.")
def main(
    real,
    generated,
    eval_shards,
    scarce_real,
    train_labels,
    modes,
    seeds,
    method,
    backbone,
    steps,
    batch_size,
    warmup_steps,
    lr,
    eval_every,
    knn_train_limit,
    eval_limit,
    probe_epochs,
    image_size,
    num_threads,
    device,
    no_baseline,
    quick,
    demo_dir,
    work_dir,
    out_dir,
):
    """The AdaInf study: none / vanilla / adainf / auto inflation, same budget, several seeds: mean ± std."""
    from shards.errors import UserError
    from shards.manifest import Manifest

    given = dict(
        backbone=backbone,
        steps=steps,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        eval_every=eval_every,
        knn_train_limit=knn_train_limit,
        eval_limit=eval_limit,
        probe_epochs=probe_epochs,
        seeds=_csv(seeds, int, "--seeds") if seeds else None,
    )
    base = dict(QUICK) if quick else {}
    base.update({k: v for k, v in given.items() if v is not None})
    cfg = StudyConfig(
        modes=_csv(modes, str, "--modes", MODES),
        method=method,
        lr=lr,
        image_size=image_size,
        num_threads=num_threads,
        device=pick_device(device),
        baseline=not no_baseline,
        **base,
    )
    if cfg.warmup_steps > cfg.steps // 10:
        cfg = dataclasses.replace(cfg, warmup_steps=cfg.steps // 10)  # train.py's own cap, stated in settings

    try:
        if real is None:
            if generated or eval_shards or scarce_real:
                raise click.UsageError(
                    "--generated / --eval-shards / --scarce-real need --real as well "
                    "(or give none of them for the demo data)"
                )
            real, generated, eval_shards = demo_data(demo_dir)
            full_name = "demo"
        else:
            missing = [o for o, v in (("--generated", generated), ("--eval-shards", eval_shards)) if not v]
            if missing:
                raise click.UsageError(f"--real needs {' and '.join(missing)} too")
            full_name = "full"
        kinds = {d: Manifest.load(d) for d in filter(None, (real, generated, eval_shards, scarce_real, train_labels))}
        for opt, d, want in (
            ("--real", real, "real"),
            ("--generated", generated, "generated"),
            ("--scarce-real", scarce_real, "real"),
            ("--eval-shards", eval_shards, "real"),
            ("--train-labels", train_labels, "real"),
        ):
            if d and kinds[d].kind != want:
                raise click.UsageError(f"{opt} {d}: a {kinds[d].kind} shard set; give a {want} one")
    except UserError as e:
        raise click.ClickException(str(e)) from None
    settings = [Setting(full_name, real, generated, train_labels or real)]
    if scarce_real:
        settings.append(Setting("scarce", scarce_real, generated, train_labels or scarce_real))

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bench-inflation-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for st in settings:
            for seed in cfg.seeds:
                for i, mode in enumerate(cfg.modes):
                    click.echo(
                        f"== {st.name}: {mode}, seed {seed} ({cfg.steps} steps of {cfg.batch_size}) ==", err=True
                    )
                    new = run_one(st, mode, seed, eval_shards, cfg, work, baseline=cfg.baseline and i == 0)
                    r = new[-1]
                    click.echo(
                        f"   kNN {100 * r['knn_acc']:.2f} %, linear probe {100 * r['linear_probe_acc']:.2f} %, "
                        f"{r['samples_per_s']} samples/s, {r['wall_s']} s",
                        err=True,
                    )
                    rows += new
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(rows)
    pairs = compare(summary, "linear_probe_acc") + compare(summary, "knn_acc")
    study = {
        **dataclasses.asdict(cfg),
        "modes": list(cfg.modes),
        "seeds": list(cfg.seeds),
        "eval_shards": eval_shards,
        "settings": [dataclasses.asdict(st) for st in settings],
        "comparisons": pairs,
        "command": "python -m bench.inflation " + " ".join(sys.argv[1:]),
    }
    path = write_results("inflation", study, rows + summary, out_dir)
    out = Path(out_dir) if out_dir else RESULTS_DIR
    host = host_kind()
    title = (
        f"{cfg.method}/{cfg.backbone}, {cfg.steps} steps of {cfg.batch_size}, seeds "
        f"{','.join(map(str, cfg.seeds))}, {host}; evaluated on {rows[-1]['eval_samples']} test images"
    )
    chart = draw_chart(rows, summary, out / f"inflation-{host}.png", title)
    table = markdown_table(summary)
    from shards.manifest import atomic_write_text

    md = atomic_write_text(
        out / f"inflation-{host}.md",
        f"{title}\n\n{table}\nDifferences of means against the seed-to-seed spread "
        f"(std₁ + std₂):\n\n{comparison_lines(pairs)}\nJSON: `{path.name}`\n\n"
        f"Command: `{study['command']}`\n",
    )
    click.echo(table)
    click.echo(comparison_lines(pairs))
    click.echo(f"wrote {path}, {chart} and {md}", err=True)


if __name__ == "__main__":
    main()
