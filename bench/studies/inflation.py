"""The AdaInf study: SimCLR under the inflation modes, the same step budget, several seeds, mean ± std. An accuracy
study that trains models (``python -m bench inflation``), not a throughput suite.

    python -m bench inflation --quick                               # built-in demo data, minutes on a CPU
    python -m bench inflation --real data/cifar10-train --generated data/edm --eval-shards data/cifar10-test \\
        --scarce-real data/cifar10-500pc --seeds 0,1,2 --steps 20000 --batch-size 512 --device cuda

For each setting (``full``: ``--real`` + ``--generated``; ``scarce``: ``--scarce-real`` + ``--generated``), each of
``--modes`` and each of ``--seeds``: one run of ``train.py`` itself (a subprocess: the product, not a copy) with the
sets given without weights, so the inflation policy picks weights and augmentation; every other setting is the
same. Per setting and seed the first run also evaluates the random-init backbone (``--compare-random``). Writes the
JSON (a row per run, ``summary`` rows with mean ± std per arm, the comparisons in its settings),
``inflation-<host>.png`` and ``inflation-<host>.md``.
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

from bench.harness import CONTEXT, RESULTS_DIR, comma_list, host_kind, resolve_shards, write_results
from loaders.recipe.policy import INFLATION_MODES
from models.training.settings import DEMO_DEFAULTS
from shards.base.errors import UserError
from shards.base.host import LOADER_THREADS, resolve_device

METRICS = ("knn_acc", "linear_probe_acc", "online_probe_acc")
TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
# train.py options every run shares, from the study's config
SHARED = ("method", "backbone", "steps", "batch_size", "lr", "warmup_steps", "device", "image_size", "num_threads")
SHARED += ("eval_every", "knn_k", "knn_train_limit", "eval_limit", "probe_epochs")


@dataclass(frozen=True)
class StudyConfig:
    modes: tuple[str, ...] = INFLATION_MODES
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
    num_threads: int = LOADER_THREADS
    device: str = "auto"
    baseline: bool = True


# Smallest sizes that still show learning: train.py --demo's sizes on the convnet, a curve point every 100 steps
_DEMO_SIZES = ("steps", "batch_size", "warmup_steps", "knn_k", "knn_train_limit", "eval_limit", "probe_epochs")
QUICK = dict(backbone="convnet", **{k: DEMO_DEFAULTS[k] for k in _DEMO_SIZES}, eval_every=100, seeds=(0, 1))


@dataclass(frozen=True)
class Setting:
    name: str  # "full" | "scarce" | "demo"
    real: str
    generated: str
    train_labels: str


def train_args(st: Setting, mode: str, seed: int, eval_shards: str, cfg: StudyConfig, out: Path, baseline: bool):
    """The train.py command line of one run: the shard sets without weights, so the policy decides."""
    opts = {k: getattr(cfg, k) for k in SHARED} | {"inflation": mode, "aug": "auto", "seed": seed}
    opts.update(log_every=math.gcd(cfg.eval_every, 50) if cfg.eval_every else min(50, cfg.steps), ckpt_every=0)
    args = ["--shards", st.real, "--shards", st.generated, "--eval-shards", eval_shards, "--no-progress"]
    args += ["--train-labels", st.train_labels, "--out", str(out)] + (["--compare-random"] if baseline else [])
    return args + [a for k, v in opts.items() if v is not None for a in (f"--{k.replace('_', '-')}", str(v))]


def throughput(records: list[dict], batch_size: int) -> tuple[float | None, float | None]:
    """(samples/s, data-wait fraction) of the run from its ``train`` records (evaluation excluded, as train.py
    excludes it): Σ samples ÷ Σ interval seconds, the wait weighted by time."""
    samples = seconds = waited = 0.0
    last = 0
    for r in (r for r in records if r.get("kind") == "train"):
        steps, last = r["step"] - last, r["step"]
        if steps > 0 and r.get("samples_per_s"):
            dt = steps * batch_size / r["samples_per_s"]
            samples, seconds, waited = samples + steps * batch_size, seconds + dt, waited + r.get("data_wait", 0.0) * dt
    return (round(samples / seconds, 1), round(waited / seconds, 4)) if seconds > 0 else (None, None)


def curve(records: list[dict]) -> list[dict]:
    """[{step, knn_acc, online_probe_acc[, linear_probe_acc]}] from the eval records and the final one."""
    keep = ("step", "knn_acc", "online_probe_acc", "linear_probe_acc")
    return [
        {k: r.get(k) for k in keep if k in r or k != "linear_probe_acc"}
        for r in records
        if r.get("kind") in ("eval", "final")
    ]


def run_one(st: Setting, mode: str, seed: int, eval_shards: str, cfg: StudyConfig, work: Path, baseline: bool):
    """Train one arm with one seed: its row (after the random-init row when ``baseline``)."""
    import yaml

    from models.training import read_records

    run_dir = work / f"{st.name}-{mode}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(TRAIN_PY), *train_args(st, mode, seed, eval_shards, cfg, run_dir, baseline)]
    proc = subprocess.run(cmd, cwd=TRAIN_PY.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise click.ClickException(f"{st.name}/{mode}/seed {seed}: train.py failed ({last})")
    wall = time.perf_counter() - t0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]
    records = read_records(run_dir)
    final = next(r for r in records if r["kind"] == "final")
    sps, wait = throughput(records, cfg.batch_size)
    kind = {src["kind"]: src for src in resolved["mixture"]}
    view, decision = resolved["augmentation"]["views"][0], resolved["inflation"]
    row = {"backend": f"train-{mode}", "setting": st.name, "variant": f"{st.name}-seed{seed}", "mode": mode}
    row.update(seed=seed, weights={"real": kind["real"]["weight"], "generated": kind["generated"]["weight"]})
    row.update(aug_preset=decision["aug_preset"], crop_min_scale=view["crop_scale"][0], jitter_p=view["jitter_p"])
    row["jitter"] = [view["brightness"], view["contrast"], view["saturation"], view["hue"]]
    row.update(effective_size=decision["effective_size"], epoch_size=resolved["epoch_size"])
    row.update(epochs=round(cfg.steps / resolved["steps_per_epoch"], 3), real=st.real, generated=st.generated)
    row.update(fid=kind["generated"].get("fid"), steps=cfg.steps, batch_size=cfg.batch_size, lr=resolved["lr"])
    row.update(device=resolved["device"], precision=resolved["precision"], samples_per_s=sps, data_wait_fraction=wait)
    row.update(wall_s=round(wall, 1), **{k: final.get(k) for k in METRICS}, eval_samples=final["eval_samples"])
    row.update(knn_train_samples=final["knn_train_samples"], curve=curve(records), reasons=decision["reasons"])
    base = next((r for r in records if r["kind"] == "baseline_random_init"), None)
    if base is None:
        return [row]
    init = {"backend": "random-init", "setting": st.name, "variant": f"{st.name}-seed{seed}", "mode": "random-init"}
    init.update(seed=seed, weights=None, steps=0, batch_size=None, samples_per_s=None, knn_acc=base["knn_acc"])
    init.update(online_probe_acc=None, linear_probe_acc=base.get("linear_probe_acc"), eval_samples=base["eval_samples"])
    init.update(knn_train_samples=base["knn_train_samples"], curve=[{"step": 0, "knn_acc": base["knn_acc"]}])
    return [init, row]


def summarize(rows: list[dict]) -> list[dict]:
    """One ``summary`` row per (setting, mode): mean and sample standard deviation over seeds of each metric."""
    arms: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        arms.setdefault((r["setting"], r["mode"]), []).append(r)
    out = []
    for (setting, mode), runs in arms.items():
        row = {"backend": "summary", "setting": setting, "mode": mode, "variant": f"{setting}-{mode}"}
        row.update(seeds=[r["seed"] for r in runs], n=len(runs))
        row.update(
            {k: runs[0][k] for k in ("weights", "crop_min_scale", "jitter", "jitter_p", "steps") if k in runs[0]}
        )
        for m in METRICS:
            values = [r[m] for r in runs if r.get(m) is not None]
            if values:
                mean = sum(values) / len(values)
                var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
                row[m] = {"mean": round(mean, 5), "std": round(math.sqrt(var), 5), "values": values}
        sps = [r["samples_per_s"] for r in runs if r.get("samples_per_s")]
        out.append({**row, "samples_per_s": round(sum(sps) / len(sps), 1) if sps else None})
    return out


def compare(summary: list[dict], metric: str = "linear_probe_acc") -> list[dict]:
    """Every pair of trained modes within a setting: the difference of means, and whether it exceeds the spread,
    |Δ| > std₁ + std₂ (a plain, conservative reading for 3 seeds, not a significance test)."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        arms = [r for r in summary if r["setting"] == setting and r["mode"] != "random-init" and metric in r]
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                delta, spread = a[metric]["mean"] - b[metric]["mean"], a[metric]["std"] + b[metric]["std"]
                pair = {"setting": setting, "metric": metric, "a": a["mode"], "b": b["mode"]}
                out.append(
                    {**pair, "delta": round(delta, 5), "spread": round(spread, 5), "exceeds": abs(delta) > spread}
                )
    return out


def markdown_table(summary: list[dict]) -> str:
    def pm(stat):
        return "-" if not stat else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"

    head = "| setting | mode | weights real:gen | crop min | jitter (b, c, s, h), p | seeds | kNN % | linear probe % |"
    lines = [head + " online probe % | samples/s |", "|" + "---|" * 10]
    for r in summary:
        w, j = r.get("weights"), r.get("jitter")
        weights = "-" if not w else f"{w['real']:g}:{w['generated']:g}"
        crop = "-" if r.get("crop_min_scale") is None else f"{r['crop_min_scale']:g}"
        jitter = "-" if j is None else f"({', '.join(f'{x:g}' for x in j)}), {r['jitter_p']:g}"
        sps = "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:,.0f}"
        accs = " | ".join(pm(r.get(m)) for m in ("knn_acc", "linear_probe_acc", "online_probe_acc"))
        lines.append(f"| {r['setting']} | {r['mode']} | {weights} | {crop} | {jitter} | {r['n']} | {accs} | {sps} |")
    return "\n".join(lines) + "\n"


def comparison_lines(pairs: list[dict]) -> str:
    return "".join(
        f"- {p['setting']}: {p['a']} − {p['b']} = {100 * p['delta']:+.2f} points of {p['metric'].replace('_acc', '')} "
        f"({'exceeds' if p['exceeds'] else 'within'} the spread {100 * p['spread']:.2f})\n"
        for p in pairs
    )


def draw_chart(rows: list[dict], summary: list[dict], path: Path, title: str) -> Path:
    """Per setting: final linear-probe and kNN accuracy per mode (mean, error bar = std over seeds, dots = seeds)
    and kNN over steps (mean over seeds)."""
    from bench.report import _pyplot, _save

    plt = _pyplot()
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 8), squeeze=False)
    for col, name in enumerate(settings):
        arms, ax = [r for r in summary if r["setting"] == name], axes[0][col]
        for k, (metric, colour) in enumerate((("linear_probe_acc", "C0"), ("knn_acc", "C1"))):
            xs = [i + (k - 0.5) * 0.3 for i, a in enumerate(arms) if metric in a]
            stats = [a[metric] for a in arms if metric in a]
            means, stds = [100 * s["mean"] for s in stats], [100 * s["std"] for s in stats]
            label = metric.replace("_acc", "").replace("_", " ")
            ax.errorbar(xs, means, yerr=stds, fmt="o", color=colour, capsize=4, label=label)
            for x, s in zip(xs, stats):
                ax.plot([x] * len(s["values"]), [100 * v for v in s["values"]], ".", color=colour, alpha=0.4)
        ax.set_xticks(range(len(arms)), [a["mode"] for a in arms])
        ax.set(title=f"{name}: final accuracy (mean ± std over seeds)", ylabel="accuracy (%)")
        ax = axes[1][col]
        for mode in dict.fromkeys(r["mode"] for r in rows if r["setting"] == name and r["mode"] != "random-init"):
            points = [p for r in rows if r["setting"] == name and r["mode"] == mode for p in r["curve"]]
            steps = sorted({p["step"] for p in points})
            knn = [[100 * p["knn_acc"] for p in points if p["step"] == s] for s in steps]
            ax.plot(steps, [sum(v) / len(v) for v in knn], marker="o", ms=3, label=mode)
        ax.set(xlabel="step", ylabel="kNN accuracy (%), mean over seeds")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def sets_of(o: dict) -> tuple[list[Setting], str]:
    """The settings to run and the evaluation set, each set checked to be of the kind its option needs."""
    from shards.format.manifest import Manifest

    keys = ("real", "generated", "eval_shards", "scarce_real", "train_labels")
    real, generated, eval_shards, scarce, labels = (o[k] for k in keys)
    if real is None and (generated or eval_shards or scarce):
        raise click.UsageError("--generated / --eval-shards / --scarce-real need --real too (or none: the demo data)")
    if real is None:
        root = Path(resolve_shards((), o["demo_dir"])[0].rsplit(":", 1)[0]).parent
        real, generated, eval_shards = (str(root / n) for n in ("real", "generated", "test"))
    missing = [flag for flag, v in (("--generated", generated), ("--eval-shards", eval_shards)) if not v]
    if missing:
        raise click.UsageError(f"--real needs {' and '.join(missing)} too")
    wanted = {"--real": real, "--scarce-real": scarce, "--eval-shards": eval_shards, "--train-labels": labels}
    for flag, d in [*wanted.items(), ("--generated", generated)]:
        want = "generated" if flag == "--generated" else "real"
        if d and Manifest.load(d).kind != want:
            raise click.UsageError(f"{flag} {d}: a {Manifest.load(d).kind} shard set; give a {want} one")
    settings = [Setting("full" if o["real"] else "demo", real, generated, labels or real)]
    return settings + ([Setting("scarce", scarce, generated, labels or scarce)] if scarce else []), eval_shards


@click.command("inflation", context_settings=CONTEXT)
@click.option("--real", type=click.Path(file_okay=False), help="labelled real shard set (the full setting)")
@click.option("--generated", type=click.Path(file_okay=False), help="generated shard set (both settings)")
@click.option("--eval-shards", type=click.Path(file_okay=False), help="labelled test shard set")
@click.option("--scarce-real", type=click.Path(file_okay=False), help="a small labelled real set: the scarce setting")
@click.option("--train-labels", type=click.Path(file_okay=False), help="kNN / probe training set [each real set]")
@click.option("--modes", default=",".join(INFLATION_MODES), show_default=True, help="comma-separated inflation modes")
@click.option("--seeds", help="comma-separated seeds, one run per seed and arm [0,1,2; --quick 0,1]")
@click.option("--method", default="simclr", show_default=True, help="the contrastive method of every run")
@click.option("--backbone", type=click.Choice(["resnet18", "convnet"]), help="[resnet18; --quick convnet]")
@click.option("--steps", type=click.IntRange(1), help="steps per run, the same for every run")
@click.option("--batch-size", type=click.IntRange(2))
@click.option("--warmup-steps", type=click.IntRange(0))
@click.option("--lr", type=float, help="learning rate per 256 samples [the method's]")
@click.option("--eval-every", type=click.IntRange(0), help="steps between kNN evaluations (the curve)")
@click.option("--knn-train-limit", type=click.IntRange(0), help="cap on labelled training images (0: all)")
@click.option("--eval-limit", type=click.IntRange(0), help="cap on test images (0: all)")
@click.option("--probe-epochs", type=click.IntRange(0), help="offline linear-probe epochs")
@click.option("--image-size", type=click.IntRange(8), default=32, show_default=True)
@click.option("--num-threads", type=click.IntRange(1), default=LOADER_THREADS, show_default=True, help="DALI threads")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--no-baseline", is_flag=True, help="skip the random-init rows")
@click.option("--quick", is_flag=True, help="CPU-sized: convnet, train.py --demo's sizes, two seeds")
@click.option("--demo-dir", type=click.Path(file_okay=False), help="where the demo data is when no --real is given")
@click.option("--work-dir", type=click.Path(file_okay=False), help="keep the run directories here [a temp dir]")
@click.option("--out-dir", type=click.Path(file_okay=False), help="where the JSON, PNG and table go")
def main(modes, seeds, method, lr, image_size, num_threads, device, no_baseline, quick, work_dir, out_dir, **o):
    """The AdaInf study: none / vanilla / adainf / auto inflation, same budget, several seeds: mean ± std."""
    from shards.base.atomic import atomic_write_text

    sizes = ("backbone", "steps", "batch_size", "warmup_steps", "eval_every", "knn_train_limit", "eval_limit")
    given = {k: o.pop(k) for k in (*sizes, "probe_epochs")}
    given["seeds"] = tuple(comma_list(seeds, int, flag="--seeds")) if seeds else None
    base = (dict(QUICK) if quick else {}) | {k: v for k, v in given.items() if v is not None}
    cfg = StudyConfig(modes=tuple(comma_list(modes, str, INFLATION_MODES, "--modes")), method=method, lr=lr, **base)
    cfg = dataclasses.replace(cfg, image_size=image_size, num_threads=num_threads, baseline=not no_baseline)
    cfg = dataclasses.replace(cfg, warmup_steps=min(cfg.warmup_steps, cfg.steps // 10))  # train.py's own cap
    try:
        cfg = dataclasses.replace(cfg, device=resolve_device(device))
        settings, eval_shards = sets_of(o)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-inflation-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for st in settings:
            for seed in cfg.seeds:
                for i, mode in enumerate(cfg.modes):
                    click.echo(
                        f"== {st.name}: {mode}, seed {seed} ({cfg.steps} steps of {cfg.batch_size}) ==", err=True
                    )
                    rows += run_one(st, mode, seed, eval_shards, cfg, work, baseline=cfg.baseline and i == 0)
                    r = rows[-1]
                    knn, probe = 100 * r["knn_acc"], 100 * r["linear_probe_acc"]
                    click.echo(
                        f"   kNN {knn:.2f} %, linear probe {probe:.2f} %, {r['samples_per_s']} samples/s", err=True
                    )
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(rows)
    pairs = compare(summary, "linear_probe_acc") + compare(summary, "knn_acc")
    study = {**dataclasses.asdict(cfg), "modes": list(cfg.modes), "seeds": list(cfg.seeds), "eval_shards": eval_shards}
    study.update(settings=[dataclasses.asdict(st) for st in settings], comparisons=pairs)
    study["command"] = "python -m bench inflation " + " ".join(a for a in sys.argv[1:] if a != "inflation")
    path = write_results("inflation", study, rows + summary, out_dir)
    out, host = Path(out_dir) if out_dir else RESULTS_DIR, host_kind()
    title = f"{cfg.method}/{cfg.backbone}, {cfg.steps} steps of {cfg.batch_size}, seeds {','.join(map(str, cfg.seeds))}"
    title += f", {host}; evaluated on {rows[-1]['eval_samples']} test images"
    chart = draw_chart(rows, summary, out / f"inflation-{host}.png", title)
    table, lines = markdown_table(summary), comparison_lines(pairs)
    text = f"{title}\n\n{table}\nDifferences of means against the seed-to-seed spread (std₁ + std₂):\n\n{lines}"
    md = atomic_write_text(
        out / f"inflation-{host}.md", f"{text}\nJSON: `{path.name}`\n\nCommand: `{study['command']}`\n"
    )
    click.echo(f"{table}\n{lines}")
    click.echo(f"wrote {path}, {chart} and {md}", err=True)
