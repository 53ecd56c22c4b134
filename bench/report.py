"""Charts and a Markdown table from the benchmark JSON files (bench/README.md, "Report").

    python -m bench.report [--results-dir DIR] [--out-dir DIR] [--all-runs]

Keeps the newest run of each benchmark per host kind (the newest full one when there is one; ``--all-runs``: every
run) and draws ``throughput.png``, ``data-wait.png`` and ``scale.png``, then writes ``README.md`` beside them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from bench.exactness import share_text
from bench.harness import CONTEXT, RESULTS_DIR, host_kind

DIR = click.Path(file_okay=False, path_type=Path)

# Row keys that tell rows of one backend apart, in the order they appear in a label.
LABEL_KEYS = ("format", "device", "axis", "planned_samples", "sources", "batch_size", "method", "precision", "variant")
THROUGHPUT_BENCHES = ("loader", "formats", "model", "end-to-end")
# Benchmarks timed by bench.harness.timed with memory from its PssSampler: rows carry the counts and peak_pss_mb.
TIMED_BENCHES = ("loader", "formats", "model", "scale", "scale-full", "pack", "end-to-end")
TIMING_KEYS = ("warmup_batches", "timed_batches", "seconds")
UNRATED_ROWS = ("feed",)  # benchmarks with rows that are not rates (opening a set, the epoch boundary)
LEGACY_MEMORY_KEYS = ("peak_rss_mb", "rss_tree_peak_mb", "process_maxrss_mb")


@dataclass(frozen=True)
class Run:
    path: Path
    bench: str
    host: str
    hardware: dict
    settings: dict
    results: tuple[dict, ...]
    quick: bool = False

    @property
    def stamp(self) -> str:
        return self.path.name  # "<host>-<YYYYmmdd-HHMMSS>-<bench>.json" sorts by time within a host


def check_doc(doc: object) -> list[str]:
    """Problems with one results document (empty when it has the common shape)."""
    if not isinstance(doc, dict):
        return ["top level is not an object"]
    problems = [f"missing {k!r}" for k in ("bench", "hardware", "settings", "results") if k not in doc]
    if problems:
        return problems
    if not isinstance(doc["hardware"], dict) or not {"cpu", "cores", "gpu", "torch"} <= set(doc["hardware"]):
        problems.append("'hardware' lacks cpu/cores/gpu/torch")
    if not isinstance(doc["settings"], dict):
        problems.append("'settings' is not an object")
    if not isinstance(doc["results"], list):
        return problems + ["'results' is not a list"]
    for i, row in enumerate(doc["results"]):
        if not isinstance(row, dict) or not isinstance(row.get("backend"), str):
            problems.append(f"results[{i}] has no 'backend' string")
        elif "samples_per_s" not in row and doc["bench"] not in UNRATED_ROWS:
            problems.append(f"results[{i}] has no 'samples_per_s'")
        elif row.get("samples_per_s") is not None and not isinstance(row["samples_per_s"], (int, float)):
            problems.append(f"results[{i}].samples_per_s is not a number")
        elif doc["bench"] in TIMED_BENCHES:
            problems += _timed_row_problems(i, row)
    if doc["bench"] in TIMED_BENCHES and not isinstance(doc.get("quick"), bool):
        problems.append("no 'quick' flag (true/false) at the top level")
    return problems


def _timed_row_problems(i: int, row: dict) -> list[str]:
    """A row of a benchmark timed by bench.harness.timed: its counts, and memory as peak PSS."""
    legacy = [k for k in LEGACY_MEMORY_KEYS if k in row]
    if legacy:
        return [f"results[{i}] has the old memory field {legacy[0]!r} (summed RSS); re-run for peak_pss_mb"]
    if row["samples_per_s"] is None:
        return []
    problems = [f"results[{i}] has no {k!r}" for k in TIMING_KEYS if not isinstance(row.get(k), (int, float))]
    if row.get("backend") != "plan_epoch" and "peak_pss_mb" not in row:
        problems.append(f"results[{i}] has no 'peak_pss_mb'")
    return problems


def load_runs(results_dir: Path, all_runs: bool = False) -> list[Run]:
    """Every well-shaped results file in ``results_dir`` (the newest per bench and host unless all_runs)."""
    runs = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            click.echo(f"skipping {path}: not readable JSON ({e}); delete it or re-run its benchmark", err=True)
            continue
        problems = check_doc(doc)
        if problems:
            click.echo(f"skipping {path}: {problems[0]}; re-run its benchmark to rewrite it", err=True)
            continue
        quick = bool(doc.get("quick", doc["settings"].get("quick", False)))
        hw = doc["hardware"]
        runs.append(Run(path, doc["bench"], host_kind(hw), hw, doc["settings"], tuple(doc["results"]), quick))
    if all_runs:
        return runs
    newest: dict[tuple[str, str], Run] = {}
    for run in runs:  # full runs before quick ones, then the newest
        key = (run.bench, run.host)
        if key not in newest or (not run.quick, run.stamp) > (not newest[key].quick, newest[key].stamp):
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (r.host, r.bench))


def row_label(row: dict) -> str:
    parts = [row["backend"]]
    for key in LABEL_KEYS:
        if row.get(key) is not None:
            value = row[key]
            parts.append(f"{value:,}" if isinstance(value, int) else str(value))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------
def _num(v, digits: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:.{digits}f}"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def _timed(run: Run, row: dict) -> str:
    """How the figure was timed: "N in S s" (batches or steps; whole packs for pack), flagged when quick or
    when it misses the rule (≥ 50 batches or ≥ 10 s)."""
    n = row.get("timed_batches", row.get("timed_steps"))
    if n is None or row.get("seconds") is None:
        return "(quick)" if run.quick else "–"
    text = f"{n:,} in {row['seconds']:.1f} s"
    if run.quick:
        text += " (quick)"
    elif row.get("meets_minimum") is False:
        text += " (under the minimum)"
    return text


def markdown(runs: list[Run]) -> str:
    """One table per host: bench, row label, samples/s, peak PSS, how it was timed, and the per-bench extras."""
    out = []
    for host in sorted({r.host for r in runs}):
        host_runs = [r for r in runs if r.host == host]
        hw = host_runs[0].hardware
        out.append(
            f"### {host}: {hw.get('cpu')} ({hw.get('cores')} cores), GPU {hw.get('gpu') or 'none'}, "
            f"torch {hw.get('torch')}, DALI {hw.get('dali')}\n"
        )
        out.append(
            "| bench | backend | samples/s | peak PSS MiB | timed | data wait | ratio to ceiling | plan s | "
            "plan MiB | run |"
        )
        out.append("|---|---|---:|---:|---|---:|---:|---:|---:|---|")
        for run, row in ((r, row) for r in host_runs for row in r.results):
            cells = [run.bench, row_label(row), _num(row.get("samples_per_s")), _num(row.get("peak_pss_mb"))]
            cells += [_timed(run, row), *(_num(row.get(k), 3) for k in ("data_wait_fraction", "ratio_to_ceiling"))]
            cells += [_num(row.get("plan_s"), 3), _num(row.get("plan_mb"), 1), run.path.name]
            out.append(f"| {' | '.join(cells)} |")
        out.append("")
        out += loader_table([r for r in host_runs if r.bench == "loader"])
    return "\n".join(out)


def loader_table(runs: list[Run]) -> list[str]:
    """The loader runs' rounds and exactness (issue 26): each row's ratio to the reference as median [range] over
    the interleaved rounds, and what one epoch of its order delivered; a row that did not run says why."""
    rows = [(r, row) for r in runs for row in r.results if "real_exact" in row or "skipped" in row or "failed" in row]
    if not rows:
        return []
    out = [
        "| loader run | backend | vs reference, median [range] | real seen 10× | generated seen 1× | samples lost | "
        "generated share per batch | outside the bound |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for run, row in rows:
        if row.get("samples_per_s") is None:
            cells = [run.path.name, row_label(row), f"not run: {row.get('skipped') or row.get('failed')}"]
            out.append(f"| {' | '.join(cells + [''] * 5)} |")
            continue
        ratio = _num(row.get("vs_reference"), 2)
        if row.get("vs_reference_min") is not None:
            lo, hi, n = row["vs_reference_min"], row["vs_reference_max"], len(row.get("vs_reference_rounds") or [])
            ratio += f" [{lo:.2f}–{hi:.2f}, {n} rounds]"
        share = share_text(row) or "–"
        cells = [run.path.name, row_label(row), ratio, _pct(row.get("real_exact")), _pct(row.get("generated_exact"))]
        cells += [_num(row.get("samples_lost")), share, _num(row.get("batches_outside_bound"))]
        out.append(f"| {' | '.join(cells)} |")
    return [*out, ""]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


# ---------------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    from shards.base.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def chart_throughput(runs: list[Run], path: Path) -> Path | None:
    bars = [
        (f"{r.host} · {r.bench}{' (quick)' if r.quick else ''} · {row_label(row)}", row["samples_per_s"])
        for r in runs
        if r.bench in THROUGHPUT_BENCHES
        for row in r.results
        if row.get("samples_per_s") and row.get("backend") != "plan_epoch"
    ]  # planned, not loaded, samples
    if not bars:
        return None
    fig, ax = _pyplot().subplots(figsize=(9, 0.35 * len(bars) + 1.2))
    labels, values = zip(*bars)
    _bars(ax, labels, values, "tab:blue", "two-view samples / s")
    spans = [  # the range over the interleaved rounds (bench loader --rounds)
        (r, row)
        for r in runs
        if r.bench in THROUGHPUT_BENCHES
        for row in r.results
        if row.get("samples_per_s") and row.get("backend") != "plan_epoch"
    ]
    for i, (_, row) in enumerate(spans):
        if row.get("samples_per_s_min") is not None and row.get("samples_per_s_max") is not None:
            ax.plot([row["samples_per_s_min"], row["samples_per_s_max"]], [i, i], color="k", lw=1.2)
    missing = [
        f"{r.host} · {r.bench} · {row['backend']}: {row.get('skipped') or row.get('failed')}"
        for r in runs
        if r.bench == "loader"
        for row in r.results
        if row.get("samples_per_s") is None and (row.get("skipped") or row.get("failed"))
    ]
    if missing:  # the rows that could not run keep their place: below the chart, with why
        text = "\n".join(f"not run: {m[:150]}" for m in missing)
        fig.text(0.01, -0.02, text, fontsize=6, va="top", ha="left")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
    if max(values) > 100 * min(values):
        ax.set_xscale("log")
    ax.set_title("Throughput per backend")
    return _save(fig, path)


def _bars(ax, labels, values, color: str, xlabel: str, target: tuple[float, str] | None = None) -> None:
    ax.barh(range(len(values)), values, color=color)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    if not ax.yaxis_inverted():  # the first row on top (once: axes may share the y axis)
        ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if target:
        ax.axvline(target[0], color="k", ls="--", lw=0.8, label=target[1])
        ax.legend(fontsize=7)


def chart_data_wait(runs: list[Run], path: Path) -> Path | None:
    rows = [
        (f"{r.host} · {row_label(row)} · {loader_label(row)}", row)
        for r in runs
        if r.bench == "end-to-end"
        for row in r.results
        if row.get("backend") == "end-to-end" and row.get("data_wait_fraction") is not None
    ]
    if not rows:
        return None
    fig, (ax1, ax2) = _pyplot().subplots(1, 2, figsize=(10, 0.4 * len(rows) + 1.5), sharey=True)
    labels = [label for label, _ in rows]
    waits, ratios = (
        [row["data_wait_fraction"] for _, row in rows],
        [row.get("ratio_to_ceiling") or 0 for _, row in rows],
    )
    _bars(ax1, labels, waits, "tab:red", "fraction of step time waiting for data", (0.03, "target ≤ 0.03"))
    _bars(ax2, labels, ratios, "tab:green", "end-to-end samples/s ÷ model ceiling", (0.97, "target ≥ 0.97"))
    fig.suptitle("Is the GPU saturated?")
    return _save(fig, path)


def loader_label(row: dict) -> str:
    """Where the row's loader ran: its DALI pipeline's device and threads (older files: the ``loader`` name)."""
    device = row.get("loader_device") or (row.get("loader") or "?").removeprefix("dali-")
    threads = f", {row['num_threads']} threads" if row.get("num_threads") else ""
    return f"loader on the {device.upper() if device in ('cpu', 'gpu') else device}{threads}"


def chart_scale(runs: list[Run], path: Path) -> Path | None:
    scale = [r for r in runs if r.bench == "scale"]
    full = [(r, row) for r in runs if r.bench == "scale-full" for row in r.results if row.get("samples_per_s")]
    if not scale and not full:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    twins = {}
    for run in scale:
        tag = f"{run.host}{' (quick)' if run.quick else ''}"
        for axis, x_key, col in (("epoch_size", "planned_samples", 0), ("sources", "sources", 1)):
            rows = sorted((row for row in run.results if row.get("axis") == axis), key=lambda row: row[x_key])
            if not rows:
                continue
            xs = [row[x_key] for row in rows]
            tput = [(x, row["samples_per_s"]) for x, row in zip(xs, rows) if row.get("samples_per_s")]
            if tput:
                axes[0][col].plot(*zip(*tput), "o-", label=f"{tag} {rows[0]['backend']} (stand-in generated set)")
            axes[1][col].plot(xs, [row.get("plan_s") for row in rows], "s-", label=f"{tag} plan s")
            mem = [(x, row["peak_pss_mb"]) for x, row in zip(xs, rows) if row.get("peak_pss_mb")]
            if mem:
                twin = twins[col] if col in twins else twins.setdefault(col, axes[1][col].twinx())  # one per column
                twin.plot(*zip(*mem), "^:", color="tab:purple", label="loader peak PSS MiB")
                twin.set_ylabel("loader peak PSS MiB (process tree)", color="tab:purple")
    for run, row in full:
        x, y, label = (
            row["planned_samples"],
            row["samples_per_s"],
            f"{run.host} whole epoch, {row.get('variant', 'full')}",
        )
        axes[0][0].plot([x], [y], "*", markersize=14, color="tab:red", label=label)
        text = f"{y:,.0f}/s, epoch {row.get('epoch_s', 0):.0f} s  "
        axes[0][0].annotate(text, (x, y), fontsize=7, ha="right", va="center")
    for col, (xlabel, log) in enumerate((("planned samples per epoch", True), ("number of sources", False))):
        axes[0][col].set_ylabel("loader two-view samples / s")
        axes[1][col].set_ylabel("planning time s")
        for row in (0, 1):
            axes[row][col].set_xlabel(xlabel)
            if log:
                axes[row][col].set_xscale("log")
            if axes[row][col].lines:
                axes[row][col].legend(fontsize=7, loc="lower left" if row == 0 else "upper left")
        if axes[0][col].lines:
            axes[0][col].set_ylim(bottom=0)
    fig.suptitle("Scaling with epoch size and number of sources")
    fig.tight_layout()
    return _save(fig, path)


def build_report(results_dir: Path, out_dir: Path, all_runs: bool = False) -> tuple[str, list[Path]]:
    """Draw the charts and write README.md into out_dir; return (markdown, files written)."""
    runs = load_runs(results_dir, all_runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (("throughput.png", chart_throughput), ("data-wait.png", chart_data_wait), ("scale.png", chart_scale))
    charts = [p for p in (draw(runs, out_dir / name) for name, draw in names) if p]
    table, images = markdown(runs), "\n".join(f"![{p.stem}]({p.name})" for p in charts)
    text = f"# Benchmark results\n\nGenerated by `python -m bench.report` from {len(runs)} run(s).\n\n"
    text += f"{images}\n\n{table}\n"
    from shards.base.atomic import atomic_write_text

    written = [*charts, atomic_write_text(out_dir / "README.md", text)]
    return table, written


@click.command("report", context_settings=CONTEXT)
@click.option("--results-dir", type=DIR, default=RESULTS_DIR, show_default=True, help="where the JSON files are")
@click.option("--out-dir", type=DIR, help="where the PNG charts and README.md go [the results dir]")
@click.option("--all-runs", is_flag=True, help="chart every run, not only the newest per benchmark and host")
def main(results_dir: Path, out_dir: Path | None, all_runs: bool) -> None:
    """Draw PNG charts and print a Markdown table from the benchmark JSON files."""
    if not results_dir.is_dir() or not any(results_dir.glob("*.json")):
        raise click.ClickException(f"{results_dir}: no benchmark JSON files here; run `python -m bench all --quick`")
    table, written = build_report(results_dir, out_dir or results_dir, all_runs)
    click.echo(table)
    for path in written:
        click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
