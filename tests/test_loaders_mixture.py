"""loaders.recipe.mixture: mixture YAML types, and weights whose epoch overflows or cannot be planned in memory."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import psutil
import pytest

from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ShardError
from shards.packing.writer import ShardSetWriter


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


GiB = 2**30


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two tiny raw shard sets: real (300 samples) and gen (50)."""
    root = tmp_path_factory.mktemp("mixture")
    for name, n, kind in (("real", 300, "real"), ("gen", 50, "generated")):
        with ShardSetWriter(root / name, name, kind=kind, format="raw", shard_size=1000) as w:
            for i in range(n):
                w.add(
                    f"{i:06d}",
                    np.full((2, 2, 3), i % 256, np.uint8).tobytes(),
                    i % 3 if kind == "real" else -1,
                    "",
                    (2, 2),
                )
    return root


@pytest.fixture
def one_gib_free(monkeypatch):
    """psutil reports 1 GiB available: half of it plans 1 GiB / 2 / 48 B = 11,184,810 samples."""
    vm = namedtuple("vm", "available total")(GiB, 64 * GiB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
    return 11_184_810


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "entry,needle",
    [
        ("{{path: {real}, weight: true}}", "weight True"),
        ("{{path: {real}, weight: '10'}}", "weight '10'"),
        ("{{path: {real}, name: 5}}", "name 5 (int)"),
        ("{{path: {real}, name: [a, b]}}", "name ['a', 'b'] (list)"),
        ("{{path: 2024, weight: 1}}", 'path: "2024"'),
    ],
)
def test_yaml_wrong_types_are_refused(sets, tmp_path, entry, needle):
    mix = tmp_path / "mix.yaml"
    mix.write_text("- " + entry.format(real=sets / "real") + "\n")
    with pytest.raises(ShardError) as e:
        parse_shards_args([str(mix)])
    msg = _one_line(e)
    assert needle in msg and str(mix) in msg and "entry 1" in msg


def test_yaml_null_name_means_no_name(sets, tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"- {{path: {sets / 'real'}, weight: 2, name: null}}\n")
    m = parse_shards_args([str(mix)])
    assert m.sources[0].name == "real" and m.weights == [2.0]


def test_huge_weight_is_refused_naming_source_weight_epoch_and_limit(sets, one_gib_free):
    with pytest.raises(ShardError) as e:
        parse_shards_args([f"{sets / 'real'}:1e6", f"{sets / 'gen'}:1"])
    msg = _one_line(e)
    assert "source 'real'" in msg and str(sets / "real") in msg
    assert "weight 1e+06 × 300 samples" in msg and "epoch of 300,000,050 samples" in msg
    assert f"at most {one_gib_free:,} can be planned" in msg and "1.0 GiB" in msg and "lower the weight" in msg


def test_weight_that_overflows_is_refused(sets):
    with pytest.raises(ShardError) as e:
        parse_shards_args([f"{sets / 'real'}:1e308", f"{sets / 'gen'}:1"])
    assert "source 'real'" in _one_line(e) and "overflows" in str(e.value)


def test_policy_weights_are_checked_too(sets, one_gib_free):
    m = parse_shards_args([f"{sets / 'real'}:10", f"{sets / 'gen'}:1"])  # ordinary weights pass with 1 GiB
    assert m.weights == [10.0, 1.0] and m.expected_epoch_size == 3050
    with pytest.raises(ShardError, match="source 'gen'"):
        m.with_weights([10, 1e7])


# -- --shards arguments: directories, weights, YAML; errors in one line ------------------------------------
def test_parse_dir_weights_and_yaml(data, tmp_path):
    m = parse_shards_args([f"{data['real']}:10", str(data["gen"])])
    assert [s.name for s in m.sources] == ["real", "gen"] and m.weights == [10.0, 1.0]
    assert m.counts == [30, 45] and m.sources[1].kind == "generated"
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"- {{path: {data['real']}, weight: 2.5, name: cifar}}\n- {{path: {data['gen']}, weight: 0}}\n")
    m = parse_shards_args([str(mix)])
    assert [s.name for s in m.sources] == ["cifar", "gen"] and m.weights == [2.5, 0.0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{tmp}/nope:1"], "no such directory"),
        (["{real}:abc"], "not a number"),
        (["{real}:-1"], "invalid"),
        (["{real}:0"], "weight 0"),
        (["{real}", "{real}"], "used twice"),
    ],
)
def test_parse_errors_are_one_clear_line(data, tmp_path, args, needle):
    args = [a.format(tmp=tmp_path, real=data["real"]) for a in args]
    with pytest.raises(ShardError, match=needle) as e:
        parse_shards_args(args)
    assert "\n" not in str(e.value)


def test_parse_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest.json"):
        parse_shards_args([f"{tmp_path / 'empty'}:1"])
