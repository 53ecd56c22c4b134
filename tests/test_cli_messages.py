"""What the commands say where a newcomer meets them (issue 27, items 2-4): hints that lead the right way,
no silent waits, commands that agree. Each test asserts the command-line output itself."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import train
from loaders.__main__ import main as loaders_cli


@pytest.fixture(scope="module")
def data(demo_sets):
    return demo_sets(24, 24, 8)


def _one_error_line(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- item 2: --shards hints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cli", ["train", "audit"])
def test_a_folder_of_shard_sets_names_them_and_the_flags(data, cli):
    parent = data["real"].parent
    args = ["--shards", str(parent)]
    result = CliRunner().invoke(
        *((train.main, [*args, "--print-config"]) if cli == "train" else (loaders_cli, ["audit", *args]))
    )
    line = _one_error_line(result)
    assert f"--shards {parent}: a folder that holds shard sets (generated, real, test), not a shard set itself" in line
    assert f"--shards {parent / 'generated'} --shards {parent / 'real'} --eval-shards {parent / 'test'}" in line
    assert "pack" not in line


def test_one_shard_tar_points_at_its_set(data):
    tar = sorted(data["real"].glob("*.tar"))[0]
    line = _one_error_line(CliRunner().invoke(train.main, ["--shards", f"{tar}:10", "--print-config"]))
    assert (
        line == f"Error: --shards {tar}: one shard of the shard set {data['real']}, not a shard set itself; "
        f"give the set's folder: --shards {data['real']}"
    )


def test_an_unrelated_folder_is_not_offered_to_pack(tmp_path):
    for name in ("docs", "hooks", "tools"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.md").write_text("text")
    line = _one_error_line(CliRunner().invoke(train.main, ["--shards", str(tmp_path), "--print-config"]))
    assert (
        f"--shards {tmp_path}: a folder of neither images nor shard sets (its folders docs, hooks, tools hold "
        "no images)" in line
    )
    assert "shards pack" in line and f"pack {tmp_path}" not in line


def test_a_checkout_with_one_picture_is_not_an_image_tree(tmp_path, sample_image, encode_image):
    for name in ("bench", "docs", "loaders", "models"):
        (tmp_path / name).mkdir()
    (tmp_path / "docs" / "preview.png").write_bytes(encode_image(sample_image(0), "png"))
    line = _one_error_line(CliRunner().invoke(train.main, ["--shards", str(tmp_path), "--print-config"]))
    assert (
        "a folder of neither images nor shard sets (of its folders bench, docs, loaders, models, only docs "
        "holds images)" in line
    )
    assert f"pack {tmp_path}" not in line


def test_an_image_tree_still_gets_the_pack_command(tmp_path, sample_image, encode_image):
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            (tmp_path / split / label / "0.png").write_bytes(encode_image(sample_image(0), "png"))
    line = _one_error_line(CliRunner().invoke(train.main, ["--shards", str(tmp_path), "--print-config"]))
    assert "a folder of image trees (test, train), not a shard set" in line
    assert f"`python -m shards pack {tmp_path} --out data/" in line


# -- item 4: commands that agree ------------------------------------------------------------------------------


def test_audit_counts_the_steps_per_epoch_training_takes(data):
    """72 samples (real x2 + generated) in batches of 16: 4 steps, the last 8 samples dropped, as training."""
    shards = ["--shards", f"{data['real']}:2", "--shards", f"{data['generated']}:1", "--batch-size", "16"]
    audit = CliRunner().invoke(loaders_cli, ["audit", *shards, "--plan-only"])
    assert audit.exit_code == 0, audit.output
    assert (
        "epoch 0: 72 samples = 4 steps of 16 (the last 8 samples, a partial batch, dropped as training does; "
        "--keep-last counts them)" in audit.output.splitlines()
    )
    config = CliRunner().invoke(train.main, [*shards, "--device", "cpu", "--print-config"])
    assert config.exit_code == 0, config.output
    assert "  steps_per_epoch: 4" in config.output.splitlines()
    kept = CliRunner().invoke(loaders_cli, ["audit", *shards, "--plan-only", "--keep-last"])
    assert (
        "epoch 0: 72 samples = 5 steps of 16 (the last partial batch of 8 counted, --keep-last; training drops it)"
        in (kept.output.splitlines())
    )


@pytest.mark.parametrize(
    "method, family",
    [("simclr", "symmetric"), ("mocov2plus", "symmetric_weak"), ("byol", "asymmetric"), ("barlow", "asymmetric")],
)
def test_audit_takes_train_py_method(data, method, family):
    result = CliRunner().invoke(
        loaders_cli, ["audit", "--shards", str(data["real"]), "--method", method, "--plan-only"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"inflation adainf ({family} augmentation family)"


def test_family_still_works_and_a_contradiction_is_one_line(data):
    ok = CliRunner().invoke(
        loaders_cli, ["audit", "--shards", str(data["real"]), "--family", "asymmetric", "--plan-only"]
    )
    assert ok.exit_code == 0 and ok.output.splitlines()[0] == "inflation adainf (asymmetric augmentation family)"
    both = CliRunner().invoke(
        loaders_cli, ["audit", "--shards", str(data["real"]), "--method", "byol", "--family", "symmetric"]
    )
    assert _one_error_line(both) == (
        "Error: --method byol trains with the asymmetric augmentation family, not --family symmetric; give one of "
        "the two (--method as train.py takes it)"
    )


def test_preview_takes_method_and_writes_under_runs_by_default(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["preview", "--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--method", "byol"]
    result = CliRunner().invoke(loaders_cli, [*args, "--n", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote runs/preview.png (") and "preset asymmetric_adainf" in result.output
    assert (tmp_path / "runs" / "preview.png").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_shortened_warmup_eval_only_title_and_metric_names(data, tmp_path):
    """--steps 30 with the default --warmup-steps 1000 says the warm-up is 3 steps; the training views'
    probe accuracy and the test set's read differently; --eval-only is not the "final accuracy"."""
    from models.training import read_records

    out = tmp_path / "run"
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--steps", "30"]
    args += ["--eval-shards", str(data["test"]), "--train-labels", str(data["real"]), "--probe-epochs", "0"]
    args += ["--batch-size", "16", "--image-size", "8", "--backbone", "convnet", "--knn-k", "5", "--log-every", "10"]
    args += ["--no-progress", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    assert (
        "warm-up: 3 steps, not --warmup-steps 1000: the warm-up is at most a tenth of the 30-step run"
        in result.output.splitlines()
    )
    train_records, (final,) = read_records(out, "train"), read_records(out, "final")
    assert all("online_probe_acc_train_views" in r and "probe_acc" not in r for r in train_records)
    assert "online_probe_acc" in final and "online_probe_acc_train_views" not in final
    evaluated = CliRunner().invoke(train.main, ["--eval-only", "--checkpoint", str(out), "--probe-epochs", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    (line,) = [ln for ln in evaluated.output.splitlines() if " test images: " in ln]
    assert line.startswith(f"evaluation of {out / 'ckpt-last.pt'} at step 30 on 8 test images: kNN ")


def test_read_records_reads_an_older_run_under_todays_names(tmp_path):
    from models.training import read_records

    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "probe_acc": 0.25}\n')
    assert read_records(tmp_path, "train") == [{"kind": "train", "step": 1, "online_probe_acc_train_views": 0.25}]


# -- item 5: one throughput figure per job ----------------------------------------------------------------------


def test_pack_prints_one_throughput_for_the_job(tmp_path, sample_image, encode_image, monkeypatch):
    """The progress lines show the live rate; the closing one gives count and time, and the summary the one
    figure for the job (not a second, different one). Lines are forced here: a small pack is quiet."""
    from functools import partial

    import shards.base.progress as progress_module
    from shards.cli import main as shards_cli

    monkeypatch.setattr(progress_module, "LineProgress", partial(progress_module.LineProgress, quiet_s=0, min_gap_s=0))
    for i in range(20):
        (tmp_path / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / f"c{i % 2}" / f"{i}.png").write_bytes(encode_image(sample_image(i), "png"))
    result = CliRunner().invoke(shards_cli, ["pack", str(tmp_path / "images"), "--out", str(tmp_path / "set")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    progress_lines = [ln for ln in lines if ln.startswith("pack ")]
    rate = re.compile(r"\d[\d,]* (img|images)/s")
    assert progress_lines[-1].startswith("pack set: 20/20 img (100%) in ") and not rate.search(progress_lines[-1])
    rates = [ln for ln in lines if rate.search(ln) and ln not in progress_lines]
    assert len(rates) == 1 and rates[0].startswith("wrote:   20 samples") and " images/s)" in rates[0]
