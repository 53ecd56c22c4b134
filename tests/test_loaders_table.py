"""loaders/batch/table.py: the sample table gathers a batch's bytes (one take or per sample), raw batches as one
array."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.batch.table import SampleTable
from shards.format.manifest import Manifest


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def test_one_take_and_the_per_sample_copy_gather_the_same_bytes(data):
    sources = [(n, data[k], Manifest.load(data[k])) for n, k in (("r", "real"), ("g", "gen"), ("w", "raw"))]
    fast, slow = SampleTable(sources, "error"), SampleTable(sources, "error", contiguous=False)
    assert fast.region is not None and slow.region is None and fast.mode == "mixed"
    rng = np.random.default_rng(0)
    source = rng.integers(0, 3, 40)
    index = np.array([rng.integers(0, [30, 45, 20][s]) for s in source])
    sel = fast.select(source, index)
    assert sel.keep is None and sel.error is None
    (a, spans), (b, spans_b) = fast.gather(sel.ids, source), slow.gather(sel.ids, source)
    assert np.array_equal(spans, spans_b)
    ppm = b"P6\n32 32\n255\n"  # a raw sample of a mixed batch: a PPM header in front of its pixels
    for j, (s, i) in enumerate(zip(source, index)):
        start, n = spans[j]
        want = fast.readers[s].bytes_of(i).tobytes()
        want = ppm + want if s == 2 else want
        assert a[j, start : start + n].tobytes() == want and b[j, start : start + n].tobytes() == want


def test_raw_batches_arrive_as_one_hwc_array(data, sample_image):
    r = SampleTable([("w", data["raw"], Manifest.load(data["raw"]))], "error")
    assert r.mode == "raw"
    [images] = r.gather(np.array([3, 0, 19]), np.zeros(3, np.int64))
    assert images.shape == (3, 32, 32, 3) and images.flags.c_contiguous
    assert all(np.array_equal(images[j], sample_image(i, seed=2)) for j, i in enumerate([3, 0, 19]))
