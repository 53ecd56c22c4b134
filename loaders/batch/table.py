"""The table of samples: the sources of a loader as one array of samples, and a batch's bytes in one copy.

A loader reads several shard sets (``shards.read.reader.SourceReader`` each); :class:`SampleTable` puts their
per-sample arrays end to end, so a planned batch — ``(source, index)`` arrays from the sampler — becomes
global sample ids ``base[source] + index`` and every per-sample fact (label, verdict, size, image size) is
one fancy index. :meth:`SampleTable.gather` turns the usable samples of a batch into what the DALI graph
reads (``loaders.batch.graph``):

* ``raw`` mode (every source raw pixels of one size): one dense ``(B, H, W, 3)`` uint8 array;
* otherwise one dense ``(B, L)`` uint8 array of encoded bytes plus ``(B, 2)`` int32 ``[start, length]``
  rows, cut per sample by the graph (DALI ingests one dense array about ten times faster than a list of
  per-sample arrays). The bytes come from one ``np.take`` of 512-byte tar blocks over every tar of the
  loader mapped back to back (``shards.read.reader.Region``): tar members start on block boundaries. In a
  ``mixed`` batch (raw and encoded sources) each raw sample gets a binary PPM header in front of its pixels,
  so that one decoder handles the whole batch (PNM is read on the CPU, JPEG by nvJPEG on a GPU) with no
  per-sample branch in the graph.

Samples whose verdict is not OK (decided when each set was opened, see ``shards.read.reader``) never reach
DALI: :meth:`select` leaves them out of their batch and reports them (``on_corrupt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.format.manifest import Manifest
from shards.read.check import OK, UNDECODABLE
from shards.read.confirm import Confirmation
from shards.read.members import BLOCK
from shards.read.reader import Region, SourceReader, check_on_corrupt

#: bytes reserved in front of each row of a mixed batch for a raw sample's PPM header
_HEADER_ROOM = 32


@dataclass
class LoaderStats:
    samples: int = 0
    batches: int = 0
    corrupt: int = 0  # samples skipped (on_corrupt="skip")
    corrupt_keys: list[str] = field(default_factory=list)  # the first 100 skipped keys

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "batches": self.batches,
            "corrupt": self.corrupt,
            "corrupt_keys": list(self.corrupt_keys),
        }


@dataclass(frozen=True)
class Selection:
    """The usable part of a planned batch: ``ids`` (global sample ids of the kept samples), ``keep`` (their
    positions in the planned batch; None: all), ``bad`` (the damaged ``(source, index)`` arrays) and, with
    ``on_corrupt="error"``, the one-line ``error`` naming the first damaged sample."""

    ids: np.ndarray
    keep: np.ndarray | None
    bad: tuple[np.ndarray, np.ndarray]
    error: str | None


_NONE = (np.zeros(0, np.int64), np.zeros(0, np.int64))


class SampleTable:
    """The samples of ``sources`` (``(name, directory, manifest)`` each) as one table.

    ``mode``: ``"raw"`` (every source raw pixels of one size), ``"encoded"`` (no raw source) or ``"mixed"``.
    Per-sample arrays over all sources: ``labels``, ``verdict``, ``sizes`` (bytes of the image member) and
    ``hw`` (the image's height and width, 0 where unknown). ``contiguous=False`` gathers sample by sample
    instead of through one mapped region (what non-Linux systems get)."""

    def __init__(self, sources: list[tuple[str, str | Path, Manifest]], on_corrupt: str, *, contiguous: bool = True):
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.names = [name for name, _, _ in sources]
        # every set's shards are hashed in background threads at once (shards.read.confirm), not one set after another
        confirming = [Confirmation(path, manifest) for _, path, manifest in sources]
        self.readers = [
            SourceReader(path, manifest, on_corrupt=on_corrupt, confirmation=c)
            for (_, path, manifest), c in zip(sources, confirming)
        ]
        self.stats = LoaderStats()
        formats = {r.format for r in self.readers}
        shapes = {r.raw_shape for r in self.readers}
        self.mode = "raw" if formats == {"raw"} and len(shapes) == 1 else "encoded" if "raw" not in formats else "mixed"
        self.raw_shape = next(iter(shapes)) if self.mode == "raw" else None
        counts = [len(r) for r in self.readers]
        self.base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def cat(f, dtype=None):
            parts = [np.asarray(f(r)) for r in self.readers]
            return np.concatenate(parts).astype(dtype or parts[0].dtype) if parts else np.zeros(0, dtype or np.int64)

        self.verdict = cat(lambda r: r.verdict)
        self.labels = cat(lambda r: r.labels)
        self.sizes = cat(lambda r: r.sizes)
        self.hw = cat(lambda r: r.hw, np.int64).reshape(-1, 2)
        self._headers = self._ppm_headers() if self.mode == "mixed" else None
        self.region = None
        offsets = cat(lambda r: r.offsets)
        if contiguous and not (offsets % BLOCK).any():
            files = [f for r in self.readers for f in r.files]
            shard_base = np.concatenate([[0], np.cumsum([len(r.files) for r in self.readers])]).astype(np.int64)
            gfile = cat(lambda r: r.shard_of.astype(np.int64)) + np.repeat(shard_base[:-1], counts)
            try:
                self.region = Region(files)
            except OSError:
                self.region = None
            if self.region is not None:
                self._row0 = self.region.first_block[gfile] + offsets // BLOCK
                self._last = self.region.last_block[gfile]
                self._nblk = np.maximum(-(-self.sizes // BLOCK), 1)

    def __len__(self) -> int:
        return int(self.base[-1])

    def ids(self, source: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Global sample ids of ``(source, index)`` pairs."""
        return self.base[np.asarray(source)] + np.asarray(index)

    def select(self, source: np.ndarray, index: np.ndarray) -> Selection:
        """The usable samples of a planned batch. With ``on_corrupt="error"`` the error is raised by the
        consumer when it reaches this batch, so every batch before it is delivered; with ``"skip"`` the
        damaged samples are counted (:meth:`count_skipped`) when their batch is delivered."""
        g = self.ids(source, index)
        bad = self.verdict[g] != OK
        if not bad.any():
            return Selection(g, None, _NONE, None)
        error = None
        if self.on_corrupt == "error":
            j = int(np.flatnonzero(bad)[0])
            error = self.readers[source[j]].describe(int(index[j]))
        keep = np.flatnonzero(~bad)
        return Selection(g[keep], keep, (source[bad], index[bad]), error)

    def gather(self, g: np.ndarray, source: np.ndarray) -> list[np.ndarray]:
        """The external-source data of samples ``g`` (of sources ``source``): ``[images]`` in raw mode, else
        ``[bytes, spans]``."""
        n, size = len(g), self.sizes[g]
        if self.region is not None:
            k = int(self._nblk[g].max())
            rows = self._row0[g][:, None] + np.arange(k)
            np.minimum(rows, self._last[g][:, None], out=rows)  # never read past a tar's end
            data = np.take(self.region.blocks, rows, axis=0).reshape(n, k * BLOCK)
        else:
            data = np.zeros((n, int(size.max())), np.uint8)
            for j, gi in enumerate(g.tolist()):
                s = int(np.searchsorted(self.base, gi, side="right")) - 1
                data[j, : size[j]] = self.readers[s].bytes_of(gi - int(self.base[s]))
        if self.mode == "raw":
            hw3 = int(np.prod(self.raw_shape))
            data = data[:, :hw3] if data.shape[1] != hw3 else data
            return [np.ascontiguousarray(data).reshape(n, *self.raw_shape)]
        spans = np.empty((n, 2), np.int32)
        if self.mode == "encoded":
            spans[:, 0], spans[:, 1] = 0, size
            return [data, spans]
        heads, length = self._headers  # one right-aligned header row per source (zeros for encoded ones)
        out = np.empty((n, _HEADER_ROOM + data.shape[1]), np.uint8)
        out[:, :_HEADER_ROOM] = heads[source]
        out[:, _HEADER_ROOM:] = data
        spans[:, 0], spans[:, 1] = _HEADER_ROOM - length[source], size + length[source]
        return [out, spans]

    def _ppm_headers(self) -> tuple[np.ndarray, np.ndarray]:
        """Per source, the binary PPM header (``P6 W H 255``) of its raw images, right-aligned in a row of
        ``_HEADER_ROOM`` bytes (all zeros, length 0, for an encoded source): (rows (S, room), lengths (S,))."""
        heads = np.zeros((len(self.readers), _HEADER_ROOM), np.uint8)
        length = np.zeros(len(self.readers), np.int64)
        for s, r in enumerate(self.readers):
            if r.format == "raw":
                h, w, _ = r.raw_shape
                b = f"P6\n{w} {h}\n255\n".encode()
                heads[s, _HEADER_ROOM - len(b) :] = np.frombuffer(b, np.uint8)
                length[s] = len(b)
        return heads, length

    def count_skipped(self, skipped: tuple[np.ndarray, np.ndarray]) -> None:
        source, index = skipped
        self.stats.corrupt += len(index)
        room = 100 - len(self.stats.corrupt_keys)
        if room > 0:
            self.stats.corrupt_keys += self.keys(source[:room], index[:room])

    def rejected(self, source: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, str]:
        """DALI's decoder failed on a batch whose bytes passed the checks when their sets were opened: find the
        culprits by checking every sample of the batch again (bytes that changed since, or a check weaker
        than DALI's), mark them undecodable for the rest of the run, and return (their positions in the batch
        — every position when no check fails, the batch then being unusable as a whole —, one line naming the
        first). Labels, verdicts and keys stay consistent with the sets; nothing is decoded by DALI here."""
        bad = np.array([not self.readers[s].decodes(i) for s, i in zip(source.tolist(), index.tolist())], bool)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            line = self.readers[source[j]].describe(
                int(index[j]), "rejected by DALI's decoder (it fails the checks now)"
            )
        else:
            bad[:] = True
            files = sorted({str(self.readers[s].shard_file(i)) for s, i in zip(source.tolist(), index.tolist())})
            line = (
                f"DALI's decoder rejected a batch of {len(bad)} samples from {', '.join(files[:4])} that pass every "
                f"check; run `python -m shards verify` on these shard sets"
            )
        self.verdict[self.ids(source[bad], index[bad])] = UNDECODABLE
        return np.flatnonzero(bad), line

    def keys(self, source, index) -> list[str]:
        """``SOURCE_NAME/KEY`` of each ``(source, index)`` pair (the source's name in the mixture, then the
        sample's key in its set: keys packed by ``shards pack`` start with the set's name themselves)."""
        source, index = np.asarray(source), np.asarray(index)
        return [f"{self.names[s]}/{self.readers[s].keys[i]}" for s, i in zip(source.tolist(), index.tolist())]
