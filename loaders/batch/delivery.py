"""The delivery: DALI's outputs → finished PyTorch tensors on the model's device, off the training thread.

:class:`Delivery` runs where ``pipe.run()`` runs (the prefetch thread, :class:`Prefetcher`). For each batch
it takes DALI's uint8 outputs (DALI reuses their buffers, so they are consumed before the next run), puts
them on the model's device, and runs ``finish`` there — the colour stage for training views
(``loaders.batch.colour``), normalisation for evaluation images — so the loader yields finished tensors:

* CPU pipeline, CPU model: the outputs are read in place (no copy) by ``finish``;
* GPU pipeline, CUDA model: each output is copied device to device on a side CUDA stream, the prefetch
  thread waits for those copies only (microseconds), and ``finish`` is queued on the side stream;
* CPU pipeline, CUDA model: each output goes to pinned memory and then to the GPU on the side stream —
  uint8 crops, a quarter of the bytes of float views — and ``finish`` runs there on the GPU.

An event marks the end of a batch's work on the side stream; :meth:`Delivery.take` runs on the consumer's
thread and makes its current stream wait on that event (without blocking the host) and marks the tensors as
used there for the caching allocator. So a batch's copies and colour stage overlap the GPU work already
queued for the previous step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

_TORCH_DTYPES = {
    "DALIDataType.FLOAT": torch.float32,
    "DALIDataType.INT64": torch.int64,
    "DALIDataType.UINT8": torch.uint8,
    "DALIDataType.FLOAT16": torch.float16,
}

#: ``finish(tensors on the device, colour parameters on the device or None) -> finished tensors``
Finish = Callable[[list[torch.Tensor], "torch.Tensor | None"], list[torch.Tensor]]


class Delivery:
    """DALI outputs of a pipeline on ``loader_device`` ("cpu"/"gpu") → tensors on the model's ``device``."""

    def __init__(self, device: torch.device, loader_device: str, finish: Finish):
        self.device, self.loader_device, self.finish = device, loader_device, finish
        self.gpu = device if device.type == "cuda" else torch.device("cuda", 0) if loader_device == "gpu" else None
        self.side = torch.cuda.Stream(self.gpu) if self.gpu is not None else None

    def make(self, outs: list, host: list[np.ndarray], colour: np.ndarray | None = None) -> tuple[list, list, object]:
        """(finished tensors, ``host`` arrays as tensors, event or None) on the model's device; ``colour``:
        the batch's (B, P) colour parameters for ``finish``."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self.side is None:  # CPU pipeline, CPU model: read DALI's buffers in place
            tensors = [torch.from_numpy(np.asarray(o.as_tensor())) for o in outs]
            params = torch.from_numpy(colour) if colour is not None else None
            return self.finish(tensors, params), [torch.from_numpy(a) for a in host], None
        with torch.cuda.device(self.gpu), torch.cuda.stream(self.side):
            tensors = []
            for o in outs:
                t = o.as_tensor()
                dtype = _TORCH_DTYPES[str(t.dtype)]
                if self.loader_device == "gpu":
                    out = torch.empty(t.shape(), dtype=dtype, device=self.gpu)
                    feed_ndarray(t, out, cuda_stream=self.side)
                else:
                    pinned = torch.empty(t.shape(), dtype=dtype, pin_memory=True)
                    feed_ndarray(t, pinned)
                    out = pinned.to(self.gpu, non_blocking=True)
                tensors.append(out)
            copied = self.side.record_event()
            if self.loader_device == "gpu":  # DALI may reuse its output buffers once released: copy first
                copied.synchronize()
            if self.device.type != "cuda":  # a GPU pipeline feeding a CPU model: finish on the CPU
                tensors = [t.cpu() for t in tensors]
                params = torch.from_numpy(colour) if colour is not None else None
                return self.finish(tensors, params), [torch.from_numpy(a) for a in host], None
            small = [torch.from_numpy(a).pin_memory().to(self.gpu, non_blocking=True) for a in host]
            params = (
                torch.from_numpy(colour).pin_memory().to(self.gpu, non_blocking=True) if colour is not None else None
            )
            done = self.finish(tensors, params)
            event = self.side.record_event()
        return done, small, event

    def take(self, dense: list[torch.Tensor], small: list[torch.Tensor], event) -> None:
        """On the consumer's thread: its current stream waits for the batch's work."""
        if event is None:
            return
        current = torch.cuda.current_stream(self.gpu)
        current.wait_event(event)
        for t in dense + small:
            t.record_stream(current)


class Prefetcher:
    """Runs a generator in a background thread, ``depth`` items ahead; exceptions re-raised in order.

    The training thread then spends almost nothing per step on data: the feed (gathering, parameter
    draws), ``pipe.run()``, the copies and the colour stage run here. Most of that time is spent in numpy,
    DALI, torch or CUDA calls, which release the GIL.
    """

    _END = object()

    def __init__(self, gen: Iterator, depth: int):
        self._gen, self._queue, self._stop = gen, queue.Queue(max(1, depth)), threading.Event()
        self._thread = threading.Thread(target=self._work, name="loader-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._gen:
                if not self._put((item, None)):
                    break
            else:
                self._put((self._END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((None, e))
        finally:
            self._gen.close()

    def __iter__(self):
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
