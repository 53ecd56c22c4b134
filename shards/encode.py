"""Encoding a batch of samples into shard members (runs inside the packing workers).

One call handles a whole batch, so the per-image Python overhead is a loop body, not a task.
Each result is ``(data, (H, W), how)`` with ``how`` in ``"encoded" | "passthrough" | "raw"``, or
``(None, None, reason)`` for an input that cannot be packed (unreadable, empty, not an image).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# PIL's name for the formats we may pass through unchanged
_PASSTHROUGH = {"jpg": "JPEG", "png": "PNG"}


@dataclass(frozen=True)
class EncodeConfig:
    format: str = "jpg"  # "jpg" | "png" | "raw"
    quality: int = 95  # JPEG quality
    png_level: int = 6  # zlib level for PNG
    passthrough: bool = True  # copy JPEG->jpg / PNG->png bytes unchanged when nothing needs converting


def encode_array(img: np.ndarray, cfg: EncodeConfig) -> bytes:
    """One H×W×3 uint8 image to the shard format."""
    if cfg.format == "raw":
        return np.ascontiguousarray(img, dtype=np.uint8).tobytes()
    return _save(Image.fromarray(img), cfg)


def _save(im: Image.Image, cfg: EncodeConfig) -> bytes:
    buf = io.BytesIO()
    if cfg.format == "jpg":
        im.save(buf, "JPEG", quality=cfg.quality)
    else:
        im.save(buf, "PNG", compress_level=cfg.png_level)
    return buf.getvalue()


def encode_batch(kind: str, payload, cfg: EncodeConfig) -> list[tuple]:
    """Encode one batch (see ``shards.sources.Batch``)."""
    if kind == "pixels":
        how = "raw" if cfg.format == "raw" else "encoded"
        size = tuple(payload.shape[1:3])
        return [(encode_array(img, cfg), size, how) for img in payload]
    out = []
    for item in payload:
        if kind == "paths":
            try:
                with open(item, "rb") as f:
                    data = f.read()
            except OSError as e:
                out.append((None, None, f"unreadable ({e.strerror or e})"))
                continue
        else:
            data = item
        out.append(encode_file(data, cfg))
    return out


def encode_file(data: bytes, cfg: EncodeConfig) -> tuple:
    """Bytes of an image file to the shard format; every image is fully decoded once, so a truncated
    or corrupt file is caught here rather than at training time."""
    if not data:
        return None, None, "empty file (0 bytes)"
    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        im.load()
    except Image.DecompressionBombError:
        return None, None, "image too large (PIL decompression-bomb limit)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return None, None, f"not a decodable image ({str(e).splitlines()[0][:80]})"
    size = (im.height, im.width)
    if cfg.passthrough and im.mode == "RGB" and _PASSTHROUGH.get(cfg.format) == fmt:
        return data, size, "passthrough"
    if im.mode != "RGB":
        im = im.convert("RGB")
    if cfg.format == "raw":
        return np.asarray(im).tobytes(), size, "raw"
    return _save(im, cfg), size, "encoded"
