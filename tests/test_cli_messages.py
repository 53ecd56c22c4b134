"""What the commands say where a newcomer meets them (issue 27, items 2-4): hints that lead the right way,
no silent waits, commands that agree. Each test asserts the command-line output itself."""

from __future__ import annotations

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
