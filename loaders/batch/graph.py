"""The DALI graphs: what DALI is made for — read the planned batch, decode, crop — and nothing else.

Training (:func:`train_pipeline`), top to bottom as DALI's resnet50 example reads::

    external_source (bytes, spans, crop boxes)  →  slice each sample's bytes out of its row
    →  decoders.image (nvJPEG on a GPU, CPU for PNG and PNM)  →  per view: resize of the crop box (ROI,
    bicubic, antialiased) to S×S  →  uint8 HWC crops

Raw pixels skip the decoder (``reshape``); in a batch that mixes raw and encoded sources the raw samples
carry a PPM header (``loaders.batch.table``) and go through the same decoder, so there is no per-sample branch.
Everything after the crop — colour jitter, grayscale, blur, solarization, flip, normalisation — is the
colour stage's (``loaders.batch.colour``), on the model's device. The graph has no random op: the crop boxes
come from the host (``loaders.batch.params``), so its output is a pure function of the fed data. A SimCLR or BYOL
recipe is 13 operators (:func:`operator_count`), whatever its colour augmentation.

Evaluation (:func:`eval_pipeline`): decode, resize the shorter side and centre-crop when the images are not
already S×S, uint8 out (normalised by the loader).
"""

from __future__ import annotations

from shards.base.errors import ConfigError, ShardError


def _decode(outs, mode: str, device: str):
    """Decoded HWC uint8 RGB images on ``device`` ("cpu" or "gpu") from the external source's first outputs."""
    from nvidia.dali import fn, types

    if mode == "raw":
        images = fn.reshape(outs[0], layout="HWC")
        return images.gpu() if device == "gpu" else images
    data, spans = outs[0], outs[1]
    data = fn.slice(data, start=spans[0:1], shape=spans[1:2], axes=[0])  # the sample's bytes out of its row
    # fancy upsampling: nvJPEG upsamples chroma as libjpeg-turbo does, so both loader devices decode alike
    gpu = {"jpeg_fancy_upsampling": True} if device == "gpu" else {}
    return fn.decoders.image(data, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, **gpu)


def _inputs(mode: str) -> int:
    return 1 if mode == "raw" else 2


def train_pipeline(
    feed, mode: str, sizes, *, relative: bool, batch_size: int, device: str, device_id: int | None, num_threads: int
):
    """The training graph: ``feed`` → decode → one ROI resize per view (``sizes``: each view's output side)."""
    from nvidia.dali import fn, pipeline_def, types

    n_in = _inputs(mode)

    @pipeline_def
    def graph():
        outs = fn.external_source(source=feed, num_outputs=n_in + 1, batch=True)
        images, crops = _decode(outs, mode, device), outs[n_in]
        return tuple(
            fn.resize(
                images,
                device=device,
                size=(size, size),
                roi_start=crops[4 * v : 4 * v + 2],
                roi_end=crops[4 * v + 2 : 4 * v + 4],
                roi_relative=relative,
                interp_type=types.INTERP_CUBIC,
                antialias=True,
            )
            for v, size in enumerate(sizes)
        )

    return _build(graph, batch_size, device, device_id, num_threads)


def eval_pipeline(
    feed, mode: str, size: int, *, resize: bool, batch_size: int, device: str, device_id, num_threads: int
):
    """The evaluation graph: ``feed`` → decode → (shorter side to ``size``, centre crop) → uint8 HWC."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def graph():
        images = _decode(fn.external_source(source=feed, num_outputs=_inputs(mode), batch=True), mode, device)
        if resize:
            images = fn.resize(
                images, device=device, resize_shorter=size, interp_type=types.INTERP_CUBIC, antialias=True
            )
            images = fn.crop(images, device=device, crop=(size, size))
        return images

    return _build(graph, batch_size, device, device_id, num_threads)


def _build(graph, batch_size: int, device: str, device_id: int | None, num_threads: int):
    p = graph(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        seed=0,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )
    try:
        p.build()
    except Exception as e:  # noqa: BLE001 - any start-up failure of a GPU pipeline gets the same advice
        if device != "gpu" or isinstance(e, ShardError):
            raise
        raise ConfigError(
            f"the GPU loader pipeline failed to start ({first_line(e)}); run the loader on the CPU "
            f"with --loader-device cpu"
        ) from None
    return p


def operator_count(pipe) -> int:
    """DALI operators the built pipeline runs per iteration (each costs a launch and per-sample argument
    set-up on a GPU, whatever the image size)."""
    return len(pipe._ops)  # DALI keeps no public count; _ops is the graph's operator list


def first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]
