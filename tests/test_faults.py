"""Nothing crashes, nothing lies (issue 19): damaged or forged shard sets give one line or are skipped and
counted, never a signal, a traceback or wrong data.

The seeded fault injection (``python -m bench fuzz``, every damage kind once, each case through verify, the
audit in both modes and train.py) runs in one subprocess, so a crash fails the test instead of killing pytest;
the other tests pin each failure class of the issue down on its own. Loaders that could crash run in a
subprocess too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.fuzz import KINDS, read_members, write_tar
from shards.base.errors import ShardError
from shards.cli import main as shards_cli
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.packing.pack import PackConfig, pack
from shards.packing.sources import ArraySource
from shards.packing.writer import ShardSetWriter
from shards.read.check import BAD_SIZE, BAD_STRUCTURE, LABEL_RANGE, OK, check_image, npy_header
from shards.read.index import format_index, read_index

ROOT = Path(__file__).resolve().parents[1]


def blocks(n: int, size=(16, 16), seed: int = 0) -> np.ndarray:
    b = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(b, np.ones((1, size[0] // 4, size[1] // 4, 1), np.uint8)))


def packed(out: Path, fmt: str, n: int = 12, kind: str = "real", shard: int = 6, name: str | None = None) -> Path:
    images = blocks(n)
    src = ArraySource("test arrays", np.arange(n) % 10, tuple(f"c{k}" for k in range(10)), images=images)
    pack(src, PackConfig(out=out, name=name or out.name, kind=kind, format=fmt, shard_size=shard, progress=False))
    return out


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def written(out: Path, blobs: list[bytes], labels=None, kind="real", fmt="jpg", classes=10, size=(16, 16)) -> Path:
    """A set written with the real writer holding exactly ``blobs`` (so its manifest agrees with them)."""
    with ShardSetWriter(
        out, out.name, kind=kind, format=fmt, shard_size=4, classes=tuple(map(str, range(classes)))
    ) as w:
        for i, blob in enumerate(blobs):
            w.add(f"{out.name}/{i:06d}", blob, i % 10 if labels is None else labels[i], str(i), size)
    return out


def edit_manifest(d: Path, **fields) -> None:
    doc = json.loads((d / MANIFEST_NAME).read_text())
    doc.update(fields)
    (d / MANIFEST_NAME).write_text(json.dumps(doc))


def refresh_manifest(d: Path) -> None:
    """The manifest's sha256, bytes and counts made to agree with the tars and indexes (a "consistent" forgery)."""
    doc = json.loads((d / MANIFEST_NAME).read_text())
    for s in doc["shards"]:
        data = (d / s["file"]).read_bytes()
        s.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), count=len(read_index(d / s["index"])))
    doc["count"] = sum(s["count"] for s in doc["shards"])
    (d / MANIFEST_NAME).write_text(json.dumps(doc))


def reindex(d: Path) -> None:
    """Every index made again from its tar (as ``wds2idx`` would), then the manifest from both."""
    import tarfile

    for s in Manifest.load(d).shards:
        with tarfile.open(d / s.file) as tf:
            groups: dict[str, list] = {}
            for i in tf:
                key, ext = i.name.rsplit(".", 1)
                groups.setdefault(key, []).append((ext, i.offset_data, i.size, i.name))
        (d / s.index).write_text(format_index(list(groups.values())))
    refresh_manifest(d)


def downgrade(d: Path) -> None:
    """Rewrite a set as manifest version 1 wrote it: plain keys, ``.raw`` pixels, no label or sha256 in .json."""
    m = Manifest.load(d)
    for s in m.shards:
        members = []
        for name, data in read_members(d / s.file):
            key, ext = name.rsplit(".", 1)
            key = key.split("/", 1)[1]
            if ext == "npy":
                ext, data = "raw", data[512:]
            elif ext == "json":
                meta = json.loads(data)
                data = json.dumps({k: meta[k] for k in ("source", "kind", "origin")}).encode()
            members.append((f"{key}.{ext}", data))
        write_tar(d / s.file, members)
    doc = json.loads((d / MANIFEST_NAME).read_text())
    doc["version"] = 1
    doc.pop("image_ext", None)
    (d / MANIFEST_NAME).write_text(json.dumps(doc, allow_nan=False))
    reindex(d)


RUN = """
import json, logging, sys
from loaders.recipe.augment import AugConfig, ViewAug
from loaders.recipe.mixture import parse_shards_args
from loaders.batch.loader import TrainLoader
from shards.base.errors import ShardError

class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())

logging.getLogger("loaders").addHandler(Keep())
view = ViewAug(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
out = []
for src, mode in json.loads(sys.argv[1]):
    seen, warnings = [], []
    try:
        loader = TrainLoader(parse_shards_args([src]), AugConfig((view,)), 4, on_corrupt=mode, num_threads=1,
                             drop_last=False)
        for b in loader.epoch(0):
            seen += [(k, float(v.sum())) for k, v in zip(loader.keys_for(b), b.views[0])]
        out.append({"ok": True, "seen": seen, "corrupt": loader.stats.corrupt, "warnings": warnings})
    except ShardError as e:
        out.append({"ok": False, "error": str(e), "seen": seen, "warnings": warnings})
print(json.dumps(out))
"""


def load_in_subprocess(*runs: tuple[Path, str]) -> list[dict]:
    """Run the training loader over one epoch of each (set, on_corrupt) in one fresh process (a crash fails the
    test, never pytest); per run: ok, seen [(key, pixel sum)], corrupt, error, warnings (the loader's log)."""
    r = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps([[str(d), mode] for d, mode in runs])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, f"the loader process died (return code {r.returncode}): {r.stderr[-2000:]}"
    assert not r.stderr.strip(), r.stderr  # nothing but the loader's log, which the runs keep
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# The seeded fault injection: every kind of damage, every command
# ---------------------------------------------------------------------------------------------------
def test_seeded_fault_injection_never_crashes_or_lies(tmp_path):
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "bench", "fuzz", "--cases", str(len(KINDS)), "--seed", "19", "--in-process"]
    cmd += ["--work", str(tmp_path / "work"), "--json", str(report_path)]
    r = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    progress = (tmp_path / "work" / "progress.txt").read_text() if (tmp_path / "work" / "progress.txt").exists() else ""
    assert r.returncode >= 0, f"the fuzz driver was killed by signal {-r.returncode} in {progress}: {r.stdout[-3000:]}"
    report = json.loads(report_path.read_text())
    failures = [
        f"case {c['case']} {c['kind']} ({c['damage']}): {c['failures']}" for c in report["records"] if c["failures"]
    ]
    assert r.returncode == 0 and not failures, "\n".join(failures) or r.stdout[-3000:]
    assert set(report["kinds"]) == set(KINDS) and report["commands_run"] == 4 * len(KINDS)
    # the damage was real: most cases made some command fail or skip something
    outcomes = [{k: v["rc"] for k, v in c["commands"].items()} for c in report["records"]]
    assert sum(o["verify"] != 0 for o in outcomes) >= len(KINDS) - 2


def test_the_fault_injection_is_a_bench_command_and_shards_does_not_import_bench():
    from bench.__main__ import cli as bench_cli
    from bench.fuzz import INT_VALUES, fuzz, summary

    r = CliRunner().invoke(bench_cli, ["fuzz", "--help"])
    assert r.exit_code == 0 and "--in-process" in r.output and f"{len(KINDS)} kinds" in r.output
    assert "fuzz" in CliRunner().invoke(bench_cli, ["list"]).output
    r = CliRunner().invoke(shards_cli, ["fuzz"])
    assert r.exit_code == 2 and "No such command 'fuzz'" in r.output
    code = "import sys, shards.cli, shards.verify, shards.read.reader\n"
    code += "sys.exit(any(m.split('.')[0] == 'bench' for m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        == 0
    )
    # the integer damage covers every type's edge: int64 overflow, beyond 2^64, negative, below int64
    assert {2**63, 2**64 + 1, -1, -(2**63) - 1} <= set(INT_VALUES) and callable(fuzz)
    report = {"records": [{"kind": "int-cls", "failures": [], "commands": {"verify": {"rc": 1}, "train": {"rc": 0}}}]}
    assert summary(report) == {"int-cls": {"verify 1, train 0": 1}}


@pytest.mark.parametrize("byte", [b"!", b"\x00", b"\xa0"])
def test_a_byte_after_the_nul_that_ends_a_tar_header_field_is_ignored_as_tar_readers_do(tmp_path, byte):
    """Found by ``python -m bench fuzz`` (seed 13, case 41): a bit flip in the last byte of a header's checksum
    field, after the NUL that ends it, passed ``tarfile`` (verify) and failed the loader's header check (the
    index "did not match"): a set that verifies must train."""
    import tarfile

    from shards.read.reader import SourceReader

    d = packed(tmp_path / "nul", "jpg")
    m = Manifest.load(d)
    tar = d / m.shards[1].file
    data = bytearray(tar.read_bytes())
    h = int(read_index(d / m.shards[1].index).offsets["jpg"][2]) - 512
    assert data[h + 154 : h + 156] == b"\x00 "
    data[h + 155 : h + 156] = byte
    tar.write_bytes(bytes(data))
    refresh_manifest(d)  # consistent: the manifest records the new bytes
    with tarfile.open(tar) as tf:
        assert len(tf.getmembers()) == 18
    assert CliRunner().invoke(shards_cli, ["verify", str(d)]).exit_code == 0
    r = SourceReader(d, Manifest.load(d), cache=False)
    assert (r.verdict == OK).all() and len(r) == 12


def test_an_empty_shard_of_a_version_2_set_verifies_and_loads(tmp_path):
    """Found by ``python -m bench fuzz`` (seed 14, case 182; seed 12, case 141): a shard holding no sample (its
    index and manifest entry saying 0) made the loader's per-sample check raise KeyError: 'meta_off'."""
    from bench.fuzz import reindex
    from shards.read.reader import SourceReader

    d = packed(tmp_path / "empty", "png")
    write_tar(d / Manifest.load(d).shards[1].file, [])  # a sound tar without members
    reindex(d, 1)  # its index and the manifest's count, bytes, sha256 and label counts made to agree
    m = Manifest.load(d)
    assert m.shards[1].count == 0 and m.count == 6 and m.version == 2
    assert CliRunner().invoke(shards_cli, ["verify", str(d)]).exit_code == 0
    r = SourceReader(d, m, cache=False)
    assert len(r) == 6 and (r.verdict == OK).all()


# ---------------------------------------------------------------------------------------------------
# Crashes: (a) images of another size than the manifest's, (b) rot after the loader cached its verdicts
# ---------------------------------------------------------------------------------------------------
def test_an_image_of_another_size_is_a_corrupt_sample_never_a_read_outside_it(tmp_path):
    from shards.read.reader import SourceReader

    imgs = list(blocks(8))
    blobs = [jpeg(x) for x in imgs]
    blobs[2] = jpeg(np.zeros((1, 1, 3), np.uint8))
    blobs[5] = jpeg(np.full((8, 200, 3), 90, np.uint8))
    d = written(tmp_path / "sizes", blobs)
    r = SourceReader(d, Manifest.load(d), cache=False)
    assert [int(v) for v in r.verdict] == [OK, OK, BAD_SIZE, OK, OK, BAD_SIZE, OK, OK]
    assert r.hw[2].tolist() == [1, 1] and r.hw[5].tolist() == [8, 200] and (r.hw[[0, 1, 3]] == 16).all()
    assert "is 8×200, not the manifest's image_size 16×16" in r.describe(5)
    big = tmp_path / "big"  # the manifest saying 64×64 for 16×16 images
    shutil.copytree(d, big)
    edit_manifest(big, image_size=[64, 64])
    skip, error, *wrong = load_in_subprocess((d, "skip"), (d, "error"), (big, "error"), (big, "skip"))
    assert skip["ok"] and skip["corrupt"] == 2 and len(skip["seen"]) == 6
    assert not error["ok"] and "\n" not in error["error"] and "not the manifest's image_size 16×16" in error["error"]
    assert "sizes/000002" in error["error"] or "sizes/000005" in error["error"]
    for out in wrong:  # nothing can be used, in either mode: one line
        assert not out["ok"] and "none of its 8 samples can be used" in out["error"] and "\n" not in out["error"]


def _rot_after_caching(d: Path, key_index: int = 1) -> None:
    """Open the set (caching its verdicts), then flip one bit of one image's first byte, keeping size and mtime."""
    from shards.read.reader import SourceReader

    m = Manifest.load(d)
    SourceReader(d, m)
    index = read_index(d / m.shards[0].index)
    tar = d / m.shards[0].file
    st = os.stat(tar)
    with open(tar, "r+b") as f:
        f.seek(int(index.offsets[m.ext][key_index]))
        b = f.read(1)
        f.seek(int(index.offsets[m.ext][key_index]))
        f.write(bytes([b[0] ^ 1]))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_rot_after_the_cache_is_found_at_the_next_open(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = packed(tmp_path / "rot", "jpg")
    _rot_after_caching(d)
    old = packed(tmp_path / "old", "jpg")  # a set of manifest version 1: no per-sample digests
    downgrade(old)
    _rot_after_caching(old)
    skip, error, old_error, old_skip = load_in_subprocess((d, "skip"), (d, "error"), (old, "error"), (old, "skip"))
    assert skip["ok"] and skip["corrupt"] == 1 and "rot/000001" not in {k.split("/", 1)[1] for k, _ in skip["seen"]}
    (line,) = skip["warnings"]
    assert "rot-00000.tar: its sha256 differs from the manifest's" in line and "1 damaged, not delivered" in line
    assert (
        not error["ok"] and "rot/000001" in error["error"] and "its shard changed since it was packed" in error["error"]
    )
    assert not error["warnings"]  # the error is the one line
    # version 1: the changed shard itself is the error; skipping checks its samples by decoding them
    assert not old_error["ok"] and "old-00000.tar: its sha256 differs" in old_error["error"]
    assert "--on-corrupt skip" in old_error["error"]
    assert (
        old_skip["ok"]
        and old_skip["corrupt"] == 1
        and "checked one by one (by decoding them)" in old_skip["warnings"][0]
    )


def test_a_changed_shard_whose_samples_all_check_out_is_reported_and_delivered(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = packed(tmp_path / "tail", "png")
    tar = d / Manifest.load(d).shards[1].file
    tar.write_bytes(tar.read_bytes() + b"garbage after the end of the archive")
    for out in load_in_subprocess((d, "error"), (d, "skip")):
        assert out["ok"] and out["corrupt"] == 0 and len(out["seen"]) == 12
        (line,) = out["warnings"]
        assert "tail-00001.tar: holds" in line and "0 damaged" in line


# ---------------------------------------------------------------------------------------------------
# Tracebacks: every manifest field checked (one line naming the field and the file)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("label_counts", "a string", "field label_counts is 'a string'"),
        ("label_counts", [1, 2], "field label_counts is [1, 2]"),
        ("shards.count", None, "field shards[0].count is None"),
        ("shards.count", "6", "field shards[0].count is '6'"),
        ("shards.file", 3, "field shards[0].file is 3"),
        ("shards.file", None, "field shards[0].file is None"),
        ("shards.index", 4, "field shards[0].index is 4"),
        ("count", float("inf"), "field count is inf"),
        ("count", 1e400, "field count is inf"),
        ("count", 300.5, "field count is 300.5"),
        ("count", True, "field count is True"),
        ("image_size", [16], "field image_size is [16]"),
        ("version", 99, "field version is 99"),
        ("kind", 1, "field kind is 1"),
        ("classes", "abc", "field classes is 'abc'"),
        ("fid", float("nan"), "field fid is nan"),
        ("shards.sha256", "zz", "field shards[0].sha256 is 'zz'"),
        ("label_counts", {"99": 12}, "field label_counts['99']"),
    ],
)
def test_every_manifest_field_is_checked(tmp_path, field, value, needle):
    d = packed(tmp_path / "m", "png")
    doc = json.loads((d / MANIFEST_NAME).read_text())
    if field.startswith("shards."):
        doc["shards"][0][field.split(".")[1]] = value
    else:
        doc[field] = value
    (d / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ShardError) as e:
        Manifest.load(d)
    msg = str(e.value)
    assert needle in msg and str(d / MANIFEST_NAME) in msg and "\n" not in msg
    for args in (["verify", str(d)], ["info", str(d)]):
        r = CliRunner().invoke(shards_cli, args)
        assert r.exit_code == 1 and needle in r.output and r.exception is None or isinstance(r.exception, SystemExit)


# ---------------------------------------------------------------------------------------------------
# Silent wrong output: labels, sizes, indexes and manifests that lie
# ---------------------------------------------------------------------------------------------------
def forge_labels(d: Path, labels: dict[int, bytes]) -> None:
    """Rewrite some ``.cls`` members (position -> bytes) in the tars, index and manifest made to agree."""
    pos = 0
    for s in Manifest.load(d).shards:
        members = []
        for n, b in read_members(d / s.file):
            if n.endswith(".cls"):
                b = labels.get(pos, b)
                pos += 1
            members.append((n, b))
        write_tar(d / s.file, members)
    reindex(d)


def test_labels_outside_the_classes_are_corrupt_samples(tmp_path):
    from shards.read.reader import SourceReader

    imgs = [jpeg(x) for x in blocks(8)]
    # version 2: the .json records each label, so a forged .cls disagrees with it
    new = written(tmp_path / "new", imgs)
    forge_labels(new, {1: b"99", 3: b"-2"})
    r = SourceReader(new, Manifest.load(new), cache=False)
    assert [i for i, v in enumerate(r.verdict) if v != OK] == [1, 3] and "disagrees with its .cls label" in r.describe(
        1
    )
    # version 1 (no label in .json): the range itself — 99, -2 and 10 in a 10-class set; -1 means unlabelled
    real = written(tmp_path / "real", imgs)
    downgrade(real)
    forge_labels(real, {1: b"99", 3: b"-2", 6: b"-1", 7: b"10"})
    r = SourceReader(real, Manifest.load(real), cache=False)
    assert [i for i, v in enumerate(r.verdict) if v == LABEL_RANGE] == [1, 3, 7] and r.verdict[6] == OK
    assert "has label 99, outside the set's classes (0 … 9 or -1)" in r.describe(1)
    # labels 0 … 10 in an unlabelled (generated) set
    gen = written(tmp_path / "gen", imgs, labels=[-1] * 8, kind="generated", classes=0)
    downgrade(gen)
    forge_labels(gen, {i: str(i + 4).encode() for i in range(7)})  # labels 4 … 10, the last sample left at -1
    g = SourceReader(gen, Manifest.load(gen), cache=False)
    assert (g.verdict[:7] == LABEL_RANGE).all() and g.verdict[7] == OK
    assert "has label 4, outside the set's classes (-1 (the set is unlabelled))" in g.describe(0)
    forge_labels(gen, {7: b"0"})  # nothing left to deliver: one line, in either mode
    with pytest.raises(ShardError, match="none of its 8 samples can be used"):
        SourceReader(gen, Manifest.load(gen), cache=False, on_corrupt="skip")


def test_train_never_reaches_a_failing_cross_entropy(tmp_path):
    import train

    imgs = [jpeg(x) for x in blocks(16)]
    d = written(tmp_path / "lab", imgs)
    downgrade(d)
    forge_labels(d, {5: b"99"})
    args = ["--shards", str(d), "--backbone", "convnet", "--steps", "2", "--batch-size", "8", "--device", "cpu"]
    args += ["--num-threads", "1"]
    r = CliRunner().invoke(train.main, [*args, "--on-corrupt", "skip", "--out", str(tmp_path / "skip")])
    assert r.exit_code == 0 and r.exception is None, r.output
    assert "1 corrupt sample(s) skipped so far (--on-corrupt skip), first: lab/000005" in r.output
    r = CliRunner().invoke(train.main, [*args, "--out", str(tmp_path / "err")])
    assert r.exit_code == 1 and "has label 99, outside the set's classes" in r.output and "Traceback" not in r.output


def test_a_labelled_set_without_class_names_sizes_the_probe_by_its_labels(tmp_path):
    """Labelled arrays (``.npz`` with a label column) pack without class names; labels 0 … 15 must give the
    online probe 16 classes, not the default 10 (a cross-entropy target out of bounds)."""
    import train

    np.savez(tmp_path / "a.npz", image=blocks(32), label=np.arange(32) % 16)
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "sixteen", format="png", progress=False))
    m = Manifest.load(tmp_path / "sixteen")
    assert m.classes == () and m.num_classes == 16
    args = ["--shards", str(tmp_path / "sixteen"), "--backbone", "convnet", "--steps", "2", "--batch-size", "16"]
    r = CliRunner().invoke(train.main, [*args, "--device", "cpu", "--num-threads", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0 and r.exception is None, r.output


def test_the_index_is_checked_not_trusted(tmp_path):
    from shards.read.reader import SourceReader

    d = packed(tmp_path / "idx", "png")
    m = Manifest.load(d)
    idx = d / m.shards[0].index
    good = idx.read_text()
    lines = good.splitlines()
    # a duplicated line (another sample never delivered, one twice), the count consistent
    idx.write_text("\n".join([lines[0], lines[1], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(ShardError, match="idx/000000 is listed twice"):
        SourceReader(d, m, cache=False)
    # one entry's offset copied from another's: the tar header there names another member
    a, b = lines[1].split(), lines[2].split()
    g = a.index("png")
    a[g + 1] = b[g + 1]
    idx.write_text("\n".join([lines[0], " ".join(a), *lines[2:]]) + "\n")
    with pytest.raises(ShardError, match=r"index does not match .*idx/000001.png.*idx/000000.png.*wds2idx"):
        SourceReader(d, m, cache=False)
    # an index that leaves a member of its tar out (its count and the manifest's agree with each other)
    idx.write_text("\n".join(["v1.2 5", *lines[1:6]]) + "\n")
    edit_manifest(d, count=11, shards=[{**m.shards[0].__dict__, "count": 5}, m.shards[1].__dict__])
    edit_manifest(d, label_counts={})
    with pytest.raises(ShardError, match="members its index does not list"):
        SourceReader(d, Manifest.load(d), cache=False)
    idx.write_text(good)
    # the same tar twice: by name (the manifest) and through a symbolic link (the loader)
    doc = json.loads((d / MANIFEST_NAME).read_text())
    doc.update(count=12, label_counts={}, shards=[m.shards[0].__dict__, m.shards[1].__dict__])
    (d / MANIFEST_NAME).write_text(json.dumps({**doc, "count": 18, "shards": [*doc["shards"], doc["shards"][0]]}))
    with pytest.raises(ShardError, match=r"shards\[2\].file 'idx-00000.tar' is already listed as shards\[0\].file"):
        Manifest.load(d)
    os.symlink(d / m.shards[0].file, d / "link.tar")
    (d / "link.idx").write_text(good)
    third = {**m.shards[0].__dict__, "file": "link.tar", "index": "link.idx"}
    (d / MANIFEST_NAME).write_text(json.dumps({**doc, "count": 18, "shards": [*doc["shards"], third]}))
    with pytest.raises(ShardError, match="link.tar: is the same file as"):
        SourceReader(d, Manifest.load(d), cache=False)
    code = CliRunner().invoke(shards_cli, ["verify", str(d)])
    assert code.exit_code == 1 and "is the same file as" in code.output and "is also in" in code.output


def test_verify_enforces_the_contract(tmp_path):
    d = packed(tmp_path / "v", "png")
    assert CliRunner().invoke(shards_cli, ["verify", str(d)]).exit_code == 0
    m = Manifest.load(d)
    # a key of shard 1 renamed to one of shard 0, consistently (index re-made, manifest updated)
    s1 = d / m.shards[1].file
    members = [(n.replace("v/000006.", "v/000000.", 1), b) for n, b in read_members(s1)]
    write_tar(s1, members)
    reindex(d)
    r = CliRunner().invoke(shards_cli, ["verify", str(d)])
    assert r.exit_code == 1 and "sample key 'v/000000' is also in v-00000.tar" in r.output
    from shards.read.reader import SourceReader

    with pytest.raises(ShardError, match="v-00001.tar: sample key v/000000 is also in v-00000.tar"):
        SourceReader(d, Manifest.load(d), cache=False)
    for field, value in (("count", 12.0), ("count", 300.5), ("version", 99)):
        e = packed(tmp_path / f"{field}{value}".replace(".", "_"), "png")
        edit_manifest(e, **{field: value})
        r = CliRunner().invoke(shards_cli, ["verify", str(e)])
        assert r.exit_code == 1 and f"field {field} is {value}" in r.output


def test_verify_and_the_loader_judge_images_with_one_check(tmp_path):
    """A JPEG with zero bytes between header segments (PIL decodes it, DALI's parser does not) used to pass
    verify and fail in the loader; a PNG in a JPEG set decodes everywhere but is not the set's format."""
    from shards.read.reader import SourceReader

    imgs = blocks(6)
    blobs = [jpeg(x) for x in imgs]
    seg = 4 + ((blobs[1][4] << 8) | blobs[1][5])
    blobs[1] = blobs[1][:seg] + b"\0\0\0\0" + blobs[1][seg:]
    buf = io.BytesIO()
    Image.fromarray(imgs[3]).save(buf, "PNG")
    blobs[3] = buf.getvalue()
    d = written(tmp_path / "one", blobs)
    r = SourceReader(d, Manifest.load(d), cache=False)
    assert [int(v) for v in r.verdict] == [OK, BAD_STRUCTURE, OK, BAD_STRUCTURE, OK, OK]
    out = CliRunner().invoke(shards_cli, ["verify", str(d)]).output
    flagged = sorted(int(line.split("sample one/")[1][:6]) for line in out.splitlines() if "sample one/" in line)
    assert flagged == [1, 3]
    assert check_image(blobs[1], "jpg")[0] == BAD_STRUCTURE and check_image(blobs[0], "jpg") == (OK, 16, 16)


def test_each_images_real_size_is_known(tmp_path):
    """``SourceReader.hw``: decoded sizes for sets of mixed sizes (no image_size in the manifest), the
    manifest's size for raw sets."""
    from shards.read.reader import SourceReader

    sizes = [(16, 16), (8, 24), (20, 12), (16, 16)]
    blobs = [jpeg(np.full((*hw, 3), 40 * i, np.uint8)) for i, hw in enumerate(sizes)]
    with ShardSetWriter(tmp_path / "mix", "mix", kind="real", format="jpg", classes=("a",)) as w:
        for i, (blob, hw) in enumerate(zip(blobs, sizes)):
            w.add(f"mix/{i}", blob, 0, str(i), hw)
    m = Manifest.load(tmp_path / "mix")
    assert m.image_size is None
    r = SourceReader(tmp_path / "mix", m, cache=False)
    assert r.hw.dtype == np.int32 and r.hw.tolist() == [list(x) for x in sizes] and (r.verdict == OK).all()
    raw = packed(tmp_path / "raw", "raw")
    assert (SourceReader(raw, Manifest.load(raw)).hw == 16).all()


# ---------------------------------------------------------------------------------------------------
# The shard format (issue 20, item 10): keys unique per set, raw pixels as .npy
# ---------------------------------------------------------------------------------------------------
def test_keys_are_unique_across_sets(tmp_path):
    from loaders.batch.table import SampleTable
    from loaders.recipe.mixture import parse_shards_args

    a = packed(tmp_path / "a", "png", name="cifar10")
    b = packed(tmp_path / "b", "png", name="edm", kind="generated")
    ka = {s["key"] for s in _read(a)}
    kb = {s["key"] for s in _read(b)}
    assert len(ka) == len(kb) == 12 and not ka & kb and all(k.startswith("cifar10/") for k in ka)
    readers = SampleTable([(s.name, s.path, s.manifest) for s in parse_shards_args([str(a), str(b)]).sources], "error")
    assert len(set(readers.readers[0].keys) | set(readers.readers[1].keys)) == 24
    # a set of manifest version 1 (plain keys, .raw pixels) keeps loading
    old = packed(tmp_path / "old", "raw")
    downgrade(old)
    m = Manifest.load(old)
    assert m.version == 1 and m.ext == "raw" and read_index(old / m.shards[0].index).keys[0] == "000000"


def _read(d: Path) -> list[dict]:
    import tarfile

    out = []
    for s in Manifest.load(d).shards:
        with tarfile.open(d / s.file) as tf:
            out += [{"key": i.name.rsplit(".", 1)[0]} for i in tf if i.name.endswith(".cls")]
    return out


def test_webdataset_decodes_a_packed_raw_set_to_the_right_arrays(tmp_path):
    import webdataset as wds

    d = packed(tmp_path / "px", "raw", kind="generated")
    m = Manifest.load(d)
    assert m.format == "raw" and m.ext == "npy" and m.version == 2
    urls = [str(d / s.file) for s in m.shards]
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    want = blocks(12)
    assert len(got) == 12
    for i in range(12):
        s = got[f"px/{i:06d}"]
        assert s["npy"].dtype == np.uint8 and s["npy"].shape == (16, 16, 3) and np.array_equal(s["npy"], want[i])
        assert (
            s["cls"] == -1 and s["json"]["sha256"] == hashlib.sha256(npy_header(16, 16) + want[i].tobytes()).hexdigest()
        )


def test_npy_and_old_raw_sets_give_the_same_batches(tmp_path, plain_view):
    """The loader reads the pixels in place (offset past the 512-byte .npy header, block-aligned, so one
    ``np.take`` still gathers a batch); an old ``.raw`` set gives the same batches."""
    import torch

    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import AugConfig
    from loaders.recipe.mixture import parse_shards_args

    new = packed(tmp_path / "new", "raw")
    old = packed(tmp_path / "old", "raw")
    downgrade(old)

    def run(d):
        loader = TrainLoader(parse_shards_args([str(d)]), AugConfig((plain_view,)), 4, drop_last=False)
        assert loader.table.region is not None and loader.table.mode == "raw"
        return [b.views[0] for b in loader.epoch(0)]

    a, b = run(new), run(old)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
