"""Shared fixtures for every package's tests.

Shard sets that several modules read are built once per session and handed out read-only (a
``MappingProxyType`` of paths); a test that damages or re-packs data builds or copies its own under
``tmp_path``. The builders themselves are fixtures too (``shard_factory``, ``sample_image``,
``encode_image``, ``corrupt_sample``, ``demo_sets``), so no test module imports another (plain helpers that
several modules call live in small modules beside this one: shareddata.py, trainargs.py, benchruns.py).

The files mirror the packages: ``test_<package>_<module or concept>.py`` (test_shards_read.py, test_loaders_loader.py,
test_models_optim.py, test_training_compiling.py, test_bench_scale.py; train.py's command line: test_train_*.py).
A test imports only public names of the packages.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest


# -- tiny synthetic shard sets, written with the real writer ------------------------------------------
def _image(i: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """The image of sample ``i`` of a set built with ``seed``: 4×4 random colour blocks scaled to ``size``
    (HWC uint8). Blocks keep block interiors exact through resizing and lossy coding."""
    rng = np.random.default_rng(seed * 100003 + i)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8)))


def _encode(img: np.ndarray, fmt: str) -> bytes:
    """``img`` as stored in a shard of format ``fmt``: raw bytes, PNG, or JPEG quality 95."""
    if fmt == "raw":
        return img.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(
        buf, format={"jpg": "JPEG", "png": "PNG"}[fmt], **({"quality": 95} if fmt == "jpg" else {})
    )
    return buf.getvalue()


def _make_shards(
    root: Path,
    name: str,
    n: int,
    *,
    kind: str = "real",
    fmt: str = "png",
    shard_size: int = 16,
    size: int = 32,
    split: str = "train",
    seed: int = 0,
    labels=None,
) -> Path:
    """A set ``root/name`` of ``n`` samples ``_image(i, size, seed)``, keys ``%06d``; a real set has 10 classes
    and labels ``i % 10`` (or ``labels[i]``), a generated one label -1."""
    from shards.packing.writer import ShardSetWriter

    out = Path(root) / name
    classes = tuple(f"c{k}" for k in range(10)) if kind == "real" else ()
    with ShardSetWriter(out, name, kind=kind, format=fmt, split=split, shard_size=shard_size, classes=classes) as w:
        for i in range(n):
            label = (i % 10 if labels is None else int(labels[i])) if kind == "real" else -1
            w.add(f"{i:06d}", _encode(_image(i, size, seed), fmt), label, origin=str(i), size=(size, size))
    return out


def _corrupt_sample(directory: Path, shard: int, sample: int) -> tuple[str, str]:
    """Zero the first 16 bytes of one stored image in place (the tar and its index stay consistent, the
    image no longer decodes); returns (the shard's file name, the sample's key)."""
    from shards.format.manifest import Manifest
    from shards.read.index import read_index

    m = Manifest.load(directory)
    idx = read_index(Path(directory) / m.shards[shard].index)
    with open(Path(directory) / m.shards[shard].file, "r+b") as f:
        f.seek(int(idx.offsets[m.format][sample]))
        f.write(b"\0" * 16)
    return m.shards[shard].file, str(idx.keys[sample])


def _read_samples(directory) -> list[dict]:
    """Every sample of a shard set, in shard order, read back with ``tarfile`` (not with the code under test);
    ``image`` is the stored bytes, for ``.npy`` members the array's pixels."""
    import json
    import tarfile

    from shards.format.manifest import Manifest

    out: list[dict] = []
    for s in Manifest.load(directory).shards:
        with tarfile.open(Path(directory) / s.file) as tf:
            cur: dict = {}
            for info in tf:
                folder, _, base = info.name.rpartition("/")  # webdataset's key: up to the file name's first dot
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if cur.get("key") != key:
                    cur = {"key": key}
                    out.append(cur)
                data = tf.extractfile(info).read()
                if ext == "cls":
                    cur["label"] = int(data)
                elif ext == "json":
                    cur["meta"] = json.loads(data)
                elif ext == "npy":  # raw pixels: the array's bytes (read with numpy's own .npy reader)
                    import numpy as np

                    cur["ext"], cur["image"] = ext, np.load(io.BytesIO(data), allow_pickle=False).tobytes()
                else:
                    cur["ext"], cur["image"] = ext, data
    return out


@pytest.fixture(scope="session")
def read_samples():
    """``read_samples(directory) -> list[dict]``: every sample of a shard set in shard order, as
    {"key", "label", "meta", "ext", "image" (the stored bytes)}, read with ``tarfile``."""
    return _read_samples


@pytest.fixture(scope="session")
def sample_image():
    """``sample_image(i, size=32, seed=0)``: the HWC uint8 image stored for sample ``i`` by ``shard_factory``
    (and ``small_shards``) in a set built with ``seed``."""
    return _image


@pytest.fixture(scope="session")
def encode_image():
    """``encode_image(img, fmt)``: the bytes ``shard_factory`` stores for ``img`` in format raw/png/jpg (q95)."""
    return _encode


@pytest.fixture(scope="session")
def shard_factory():
    """``shard_factory(root, name, n, *, kind="real", fmt="png", shard_size=16, size=32, split="train", seed=0,
    labels=None) -> Path``: writes a tiny shard set of ``sample_image(i, size, seed)`` with the real writer."""
    return _make_shards


@pytest.fixture(scope="session")
def corrupt_sample():
    """``corrupt_sample(directory, shard, sample) -> (file, key)``: damages one stored image in place."""
    return _corrupt_sample


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """The loader tests' mixture, shared read-only by the session: jpg real (30 samples, seed 0, shards of 8),
    png generated "gen" (45, seed 1, shards of 16), raw generated "rawgen" (20, seed 2) and png test (23,
    seed 3, shards of 10); keys root, real, gen, raw, test. Loaders write their index caches beside the
    shards (that is their design); nothing else may write here."""
    root = tmp_path_factory.mktemp("small-shards")
    return MappingProxyType(
        {
            "root": root,
            "real": _make_shards(root, "real", 30, fmt="jpg", shard_size=8),
            "gen": _make_shards(root, "gen", 45, kind="generated", fmt="png", shard_size=16, seed=1),
            "raw": _make_shards(root, "rawgen", 20, kind="generated", fmt="raw", seed=2),
            "test": _make_shards(root, "test", 23, fmt="png", split="test", shard_size=10, seed=3),
        }
    )


@pytest.fixture(scope="session")
def plain_view():
    """A view that changes nothing but normalisation: full-image crop, no flip, jitter, grey or blur."""
    from loaders.recipe.augment import ViewAug

    return ViewAug(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)


@pytest.fixture
def same_batches():
    """``same_batches(a, b)``: asserts two non-empty lists of loader batches are equal: positions, every view
    bitwise, labels, sources and indices."""
    import torch

    def check(a, b):
        assert len(a) == len(b) and len(a) > 0
        for x, y in zip(a, b):
            assert (x.epoch, x.step) == (y.epoch, y.step)
            assert len(x.views) == len(y.views) and all(torch.equal(u, v) for u, v in zip(x.views, y.views))
            assert torch.equal(x.labels, y.labels) and torch.equal(x.source, y.source) and torch.equal(x.index, y.index)

    return check


@pytest.fixture(scope="session")
def run_augment():
    """``run_augment(images, views, params_per_view, device="cpu", relative=False, compile=False)``: the
    training path of each view on a fixed uint8 NHWC batch with given parameters (dicts as
    ``loaders.batch.params.sample_view_params`` returns, crop boxes in pixels, made relative when ``relative``):
    the DALI training graph's crop (``loaders.batch.graph``, on "cpu" or "gpu") and then the colour stage
    (``loaders.batch.colour``, on the CPU or the GPU); float32 NCHW numpy arrays."""

    def run(images: np.ndarray, views, params_per_view, device: str = "cpu", relative: bool = False, compile=False):
        import torch

        from loaders.batch.colour import ColourStage
        from loaders.batch.graph import train_pipeline
        from loaders.batch.params import ParamLayout
        from loaders.recipe.augment import AugConfig

        aug = AugConfig(tuple(views))
        layout = ParamLayout.of(aug)
        n, (h, w) = len(images), images.shape[1:3]
        crops = np.empty((n, 4 * len(views)), np.float32)
        colour = np.zeros((n, layout.width), np.float32)
        for v, (cols, p) in enumerate(zip(layout.views, params_per_view)):
            box = np.concatenate([p["crop_start"], p["crop_end"]], axis=1)
            crops[:, 4 * v : 4 * v + 4] = box / np.array([h, w, h, w]) if relative else box
            cols.fill(colour, p)
        batch = [images, crops]

        def feed():
            return batch

        pipe = train_pipeline(
            feed,
            "raw",
            [v.size for v in views],
            relative=relative,
            batch_size=n,
            device=device,
            device_id=0,
            num_threads=1,
        )
        outs = pipe.run()
        dev = torch.device("cuda" if device == "gpu" else "cpu")
        tensors = [
            torch.from_numpy(np.asarray((o.as_cpu() if device == "gpu" else o).as_tensor())).to(dev) for o in outs
        ]
        stage = ColourStage(aug, layout, compile=compile)
        return [v.cpu().numpy() for v in stage(tensors, torch.from_numpy(colour).to(dev))]

    return run


# -- demo shard sets (shards.packing.demo.make_demo) ----------------------------------------------------------
@pytest.fixture(scope="session")
def demo_sets(tmp_path_factory):
    """``demo_sets(n_real, n_generated, n_test, *, seed=0, shard_size=16, image_size=32)``: demo shard sets
    {"real", "generated", "test"} (PNG, 10 classes; one parent folder), built once per session for each set
    of arguments and shared read-only: copy them (``demo_copy``) to damage or re-pack them."""
    from shards.packing.demo import make_demo

    built: dict[tuple, MappingProxyType] = {}

    def get(
        n_real: int, n_generated: int, n_test: int, *, seed: int = 0, shard_size: int = 16, image_size: int = 32
    ) -> MappingProxyType:
        key = (n_real, n_generated, n_test, seed, shard_size, image_size)
        if key not in built:
            root = tmp_path_factory.mktemp("demo")
            make_demo(
                root,
                n_real=n_real,
                n_generated=n_generated,
                n_test=n_test,
                seed=seed,
                shard_size=shard_size,
                image_size=image_size,
                workers=1,
            )
            built[key] = MappingProxyType({name: root / name for name in ("real", "generated", "test")})
        return built[key]

    return get


@pytest.fixture
def demo_copy(demo_sets, tmp_path):
    """``demo_copy(n_real, n_generated, n_test, **kw)``: a private, writable copy of ``demo_sets(...)`` under
    ``tmp_path/"demo"`` (fresh file times, no index caches), as a plain dict of paths."""

    def copy(*args, **kw) -> dict:
        shared = demo_sets(*args, **kw)
        root = tmp_path / "demo"
        for name, src in shared.items():
            shutil.copytree(
                src,
                root / name,
                copy_function=shutil.copy,
                ignore=shutil.ignore_patterns("*.loader-cache.npz", ".lock"),
            )
        return {name: root / name for name in shared}

    return copy


@pytest.fixture(scope="session")
def bench_demo(demo_sets):
    """The benchmark tests' demo folder (``demo_sets(64, 64, 16, shard_size=40)``): the parent of its "real",
    "generated" and "test" sets (read-only: copy a set before changing it)."""
    return demo_sets(64, 64, 16, shard_size=40)["real"].parent


@pytest.fixture(scope="session")
def demo_shards(demo_sets):
    """Small demo shard sets (``demo_sets(300, 500, 200, shard_size=128)``, PNG 32×32, 10 classes, seed 0):
    {"real": 300 labelled, split train, 3 shards; "generated": 500, label -1, 4 shards; "test": 200
    labelled, split test, 2 shards}; all three share one parent folder."""
    return demo_sets(300, 500, 200, shard_size=128)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run next to DALI's own threads on small CPU machines (CI has 2 cores): one intra-op thread for
    torch avoids oversubscription, which made model tests many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
