"""``python -m loaders audit`` as a newcomer meets it (the plan it promises, an estimate before a long audit,
plain log lines, flags named as flags, every key counted), ``-h`` in every command line, mixture YAML paths, and
``python -m loaders preview``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from loaders.__main__ import Estimate, main
from loaders.recipe.mixture import parse_shards_args
from loaders.recipe.resolve import resolve_recipe


@pytest.fixture(scope="module")
def mix(demo_shards):
    return demo_shards


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def audit(*args):
    return CliRunner().invoke(main, ["audit", *map(str, args)])


# -- --plan-only prints the plan -------------------------------------------------------------------
def test_plan_only_prints_per_source_samples_batch_shares_and_steps(data):
    res = audit("--shards", f"{data['real']}:10", "--shards", f"{data['gen']}:1", "--batch-size", 16, "--plan-only")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    # 30 x 10 + 45 x 1: 21 full batches, the last partial one dropped as training drops it (issue 27)
    assert (
        "epoch 0: 345 samples = 21 steps of 16 (the last 9 samples, a partial batch, dropped as training does; "
        "--keep-last counts them)" in lines
    )
    (real,) = [ln for ln in lines if ln.startswith("  real: ")]
    assert real.startswith("  real: 300 samples (30 x weight 10), 86.96% of every batch = 13.9 of 16 (guaranteed")
    (gen,) = [ln for ln in lines if ln.startswith("  gen: ")]
    assert gen.startswith("  gen: 45 samples (45 x weight 1), 13.04% of every batch = 2.1 of 16")
    res = CliRunner().invoke(
        main,
        ["audit", "--shards", f"{data['real']}:10", "--shards", f"{data['gen']}:1"]
        + ["--batch-size", "16", "--epochs", "2", "--drop-last", "--plan-only", "--json"],
    )
    plan = json.loads(res.stdout)["plan"]
    assert plan["total_steps"] == 2 * (345 // 16) and [e["samples"] for e in plan["epochs"]] == [345, 345]
    for e in plan["epochs"]:
        for name, want in (("real", 300), ("gen", 45)):
            v = e["sources"][name]
            assert v["samples"] == want and v["share"] == pytest.approx(want / 345)
            # every full batch of the plan within the sampler's guaranteed bound
            assert v["per_batch"] - v["per_batch_bound"] < v["per_batch_min"] <= v["per_batch_max"]
            assert v["per_batch_max"] < v["per_batch"] + v["per_batch_bound"]


# -- a run over whole epochs says what it will do, estimates, and logs plain lines ------------------
def test_audit_announces_the_epoch_and_logs_no_bar_frames(data):
    res = audit("--shards", f"{data['real']}:2", "--shards", data["gen"], "--batch-size", 16)
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    # as training: 6 full batches of 16, the last 9 samples dropped (issue 27)
    assert first.startswith(
        "auditing 1 epoch(s): 96 samples in 6 batches through the real loader (9 samples in partial last batches "
        "dropped, as training does; --keep-last counts them)"
    )
    assert "--plan-only shows the plan without running it" in first
    assert "\r" not in res.output and "sample/s]" not in res.output  # not a terminal: no tqdm frames
    assert "epoch 0: 96 samples (planned 105), 9 in a last partial batch dropped as training does, " in res.output


def test_the_estimate_says_how_long_the_rest_takes_once_measured():
    lines, seen = [], []

    class Bar:
        def update(self, n):
            seen.append(n)

        def write(self, message):
            lines.append(message)

    est = Estimate(Bar(), 550_000, after_s=0.0, min_s=0.0)
    for _ in range(3):
        est.update(512)
    assert seen == [512] * 3 and len(lines) == 1
    assert lines[0].startswith("estimate: about ") and " left at " in lines[0] and "samples/s" in lines[0]
    quiet = Estimate(Bar(), 550_000, after_s=0.0, min_s=1e9)  # a short audit: nothing to announce
    for _ in range(3):
        quiet.update(512)
    assert len(lines) == 1


# -- the flag, not the Python spelling ---------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize(
    "extra,want",
    [
        (["--device", "cuda"], "Error: --device cuda: no GPU is visible here; use --device cpu"),
        (["--loader-device", "gpu"], "Error: --loader-device gpu: no GPU is visible here; use --loader-device cpu"),
    ],
)
def test_audit_names_the_device_flags(data, extra, want):
    res = audit("--shards", data["real"], *extra)
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith(want) and "device='" not in line


def test_loader_messages_are_translated_to_flags():
    from loaders.__main__ import flag_spelling

    assert flag_spelling("device cuda requested but no GPU is visible; use device='cpu'") == (
        "device cuda requested but no GPU is visible; use --device cpu"
    )
    assert flag_spelling("with loader_device='cpu' (--loader-device cpu)") == (
        "with --loader-device cpu (--loader-device cpu)"
    )


# -- -h everywhere; mixture YAML paths are relative to the file -----------------------------------------
@pytest.mark.parametrize(
    "cli,args",
    [
        ("train", []),
        ("shards", []),
        ("shards", ["pack"]),
        ("loaders", []),
        ("loaders", ["audit"]),
        ("loaders", ["preview"]),
        ("bench", []),
        ("bench", ["loader"]),
    ],
)
def test_dash_h_is_help_in_every_command_line(cli, args):
    if cli == "train":
        import train

        command = train.main
    elif cli == "shards":
        from shards.cli import main as command
    elif cli == "loaders":
        command = main
    else:  # a fresh process, as the user runs it (click caches a command's help option per process)
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-m", "bench", *args, "-h"], cwd=root, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Usage: python -m bench") and "-h, --help" in proc.stdout
        return
    res = CliRunner().invoke(command, [*args, "-h"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Usage: ") and "-h, --help" in res.output


def test_mixture_yaml_paths_are_relative_to_the_yaml_file(tmp_path, monkeypatch, shard_factory):
    shard_factory(tmp_path / "sets", "real", 30)
    gen = shard_factory(tmp_path / "sets", "gen", 45, kind="generated")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mix.yaml").write_text(
        f"- {{path: ../sets/real, weight: 3}}\n- {{path: {gen}, weight: 1}}\n"  # relative to the file; absolute
    )
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # where ../sets/real does not exist
    res = audit("--shards", "../../configs/mix.yaml", "--batch-size", 16, "--plan-only")
    assert res.exit_code == 0, res.output
    assert "  real: 90 samples (30 x weight 3)" in res.output and "  gen: 45 samples (45 x weight 1)" in res.output


# -- audit CLI ------------------------------------------------------------------------------------
def test_audit_json_counts_every_key(data):
    res = audit(
        "--shards",
        f"{data['real']}:2",
        "--shards",
        f"{data['gen']}:1",
        "--batch-size",
        16,
        "--epochs",
        2,
        "--keep-last",
        "--json",
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert len(report["epochs"]) == 2
    e = report["epochs"][1]
    assert e["samples"] == 105 and e["per_source"] == {"real": 60, "gen": 45}
    assert e["key_multiplicity"] == {"real": {"2": 30}, "gen": {"1": 45}}
    assert e["labels"]["-1"] == 45 and sum(e["labels"].values()) == 105
    frac = e["batch_fraction"]["real"]
    assert abs(frac["mean"] - 60 / 105) < 0.05 and frac["min"] >= (16 * 60 / 105 - 2) / 16 - 1e-9
    bad = audit("--shards", f"{data['real']}:x")
    assert bad.exit_code != 0 and "not a number" in bad.output and "Traceback" not in bad.output


# ---- preview -------------------------------------------------------------------------------------------------
def test_preview_draws_real_and_generated_rows(mix, tmp_path, read_samples):
    from PIL import Image

    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        main,
        [
            "preview",
            "--shards",
            str(mix["real"]),
            "--shards",
            str(mix["generated"]),
            "--out",
            str(out),
            "--n",
            "3",
            "--scale",
            "2",
            "--family",
            "asymmetric",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "real 3, generated 3" in res.output and "asymmetric_adainf" in res.output
    img = np.asarray(Image.open(out).convert("RGB"))
    cell, gap = 32 * 2, 4
    # two groups of three columns (as stored, view 1, view 2), three rows of cells, header and title above
    assert img.shape[1] == 2 * 8 + 2 * (3 * cell + 2 * gap) + 20
    assert not list(tmp_path.glob(".grid.png.*"))  # no temporary left
    assert out.stat().st_mode & 0o044  # readable by others, as any file the user writes (umask permitting)
    # the "as stored" cells (rows counted from the bottom, ×2 nearest) are images of their own kind's set,
    # unchanged (±1 level: normalised and back), three different ones each
    for kind, x in (("real", 8), ("generated", 8 + 3 * cell + 2 * gap + 20)):
        stored = np.stack(
            [np.asarray(Image.open(io.BytesIO(s["image"])).convert("RGB")) for s in read_samples(mix[kind])]
        ).astype(int)
        shown = []
        for r in range(3):
            y = img.shape[0] - 8 - cell - (2 - r) * (cell + gap)
            tile = img[y : y + cell, x : x + cell].astype(int)
            assert np.array_equal(tile[::2, ::2], tile[1::2, 1::2])  # scaled ×2, nearest
            match = np.flatnonzero(np.abs(stored - tile[::2, ::2]).max(axis=(1, 2, 3)) <= 1)
            assert len(match) >= 1, (kind, r)
            shown.append(int(match[0]))
        assert len(set(shown)) == 3, (kind, shown)
    from loaders.preview import sample_views

    r = resolve_recipe(parse_shards_args([str(mix["real"])]), family="symmetric", inflation="none")
    stored, v1, _ = sample_views(r.mixture, r.aug, "real", n=2)
    assert stored.shape == v1.shape == (2, 32, 32, 3) and not np.array_equal(stored, v1)
    bad = CliRunner().invoke(main, ["preview", "--shards", str(mix["real"]), "--out", str(tmp_path / "no" / "x.png")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output
