"""Getting the trained backbone out: ``python -m models export``, the loading snippets of docs/guide.md ("After
training: export the backbone"), and checkpoints that load with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import models
import train
from models.__main__ import main as models_cli
from models.training.checkpoint import load_checkpoint
from models.training.runtime import rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "guide.md"
SECTION = "## After training: export the backbone"


def _train(data, out: Path, method: str = "simclr", backbone: str = "resnet18", steps: int = 2) -> Path:
    """A short run without evaluation: ``steps`` steps of batch 16 on 8×8 crops."""
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--steps", str(steps)]
    args += ["--batch-size", "16", "--image-size", "8", "--log-every", "1", "--no-progress", "--device", "cpu"]
    args += ["--method", method, "--backbone", backbone, "--out", str(out)]
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def resnet_run(demo_sets, tmp_path_factory):
    return _train(demo_sets(24, 24, 8), tmp_path_factory.mktemp("export") / "runs" / "first")


def _blocks(language: str) -> list[str]:
    section = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_checkpoint_loads_weights_only_and_resumes_the_rng(resnet_run):
    ckpt = torch.load(resnet_run / "ckpt-last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and set(ckpt["model"]) == set(models.build_method("simclr").state_dict())
    state = rng_state()
    expected = (np.random.rand(4), torch.rand(4))
    set_rng_state(torch.load(_roundtrip(state), weights_only=True))
    assert np.array_equal(np.random.rand(4), expected[0]) and torch.equal(torch.rand(4), expected[1])


def _roundtrip(obj) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_an_old_checkpoint_with_numpy_rng_state_still_loads(resnet_run, tmp_path):
    """Checkpoints written before the RNG states were tensors held numpy's state tuple (a pickled ndarray):
    ``weights_only=True`` refuses them, ``load_checkpoint`` reads them with numpy's array globals allowed."""
    ckpt = torch.load(resnet_run / "ckpt-last.pt", map_location="cpu", weights_only=True)
    np.random.seed(5)
    old_state = np.random.get_state()
    expected = np.random.rand(3)
    ckpt["rng"] = [{**ckpt["rng"][0], "numpy": old_state}]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(Exception, match="numpy"):
        torch.load(tmp_path / "old.pt", weights_only=True)
    _, loaded = load_checkpoint(tmp_path / "old.pt")
    set_rng_state(loaded["rng"][0])
    assert np.array_equal(np.random.rand(3), expected)


def test_export_cli_and_both_documented_snippets_load_it_strictly(resnet_run):
    """The doc's export command, run as written, then its two snippets: both load strict and give the same
    features as the trained method's own backbone."""
    cwd = resnet_run.parents[1]
    (command,) = _blocks("bash")
    # `python` as a user's activated environment has it: this interpreter's folder first on PATH
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote backbone.pt: the resnet18 backbone of simclr at step 2 (11,168,832 parameters)" in done.stdout
    state = torch.load(cwd / "backbone.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("backbone.") for k in state)

    project, torchvision_snippet = _blocks("python")
    os.chdir(cwd)
    try:
        scope_a: dict = {}
        exec(project, scope_a)  # load_state_dict is strict by default: a missing or extra key raises
        scope_b: dict = {}
        exec(torchvision_snippet, scope_b)
    finally:
        os.chdir(ROOT)
    method = models.build_method("simclr")
    method.load_state_dict(load_checkpoint(resnet_run)[1]["model"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = method.backbone.eval()(x)
        assert torch.equal(scope_a["net"].eval()(x), reference)
        assert torch.allclose(scope_b["tv"].eval()(x), reference, atol=1e-6)
    assert reference.shape == (4, 512)


def test_export_projector_of_a_momentum_method_is_the_online_one(demo_sets, tmp_path):
    run = _train(demo_sets(24, 24, 8), tmp_path / "byol", method="byol", backbone="convnet", steps=1)
    result = CliRunner().invoke(models_cli, ["export", str(run), "--out", str(tmp_path / "bb.pt"), "--projector"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'bb-projector.pt'}: the byol projector" in result.output
    model = load_checkpoint(run)[1]["model"]
    backbone = torch.load(tmp_path / "bb.pt", weights_only=True)
    projector = torch.load(tmp_path / "bb-projector.pt", weights_only=True)
    assert all(torch.equal(v, model[f"backbone.{k}"]) for k, v in backbone.items())
    assert set(backbone) == {k[len("backbone.") :] for k in model if k.startswith("backbone.")}
    assert all(torch.equal(v, model[f"projector.{k}"]) for k, v in projector.items())
    net = models.build_backbone("convnet")
    net.load_state_dict(backbone)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nothing", "--out", "{tmp}/bb.pt"], "{tmp}/nothing: no checkpoint here; give a run directory"),
        (["{run}", "--out", "{tmp}/missing/bb.pt"], "the folder {tmp}/missing does not exist; create it first"),
        (["{run}", "--out", "s3://bucket/bb.pt"], "--out s3://bucket/bb.pt: export writes a local file"),
        (["{run}", "--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    ],
)
def test_export_errors_are_one_line(resnet_run, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, run=resnet_run) for a in args]
    result = CliRunner().invoke(models_cli, ["export", *args])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and message.format(tmp=tmp_path) in line
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.tmp"))
