"""Encoding a batch of samples into shard members (runs inside the packing workers).

One call handles a whole batch, so the per-image Python overhead is a loop body, not a task.
Each result is ``(data, (H, W), how, source_format)``:

* ``how``: ``"passthrough"`` (the input's own bytes, unchanged), ``"lossless"`` (stored in a new
  encoding with exactly the pixels the input decodes to: raw, PNG) or ``"lossy"`` (JPEG-encoded, so
  the pixels changed);
* ``source_format``: the input's own format, lower case (``"jpeg"``, ``"png"``, ``"webp"``, ...)
  or ``"array"`` for pixels that came without an encoding;

or ``(None, None, reason, None)`` for an input that cannot be packed (unreadable, empty, not an image).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL's name for the formats we may pass through unchanged, and the image modes each may have: DALI's
# decoder (output_type RGB) and PIL both turn a greyscale JPEG into RGB, so it need not be re-encoded
_PASSTHROUGH = {"jpg": "JPEG", "png": "PNG"}
_PASSTHROUGH_MODES = {"jpg": ("RGB", "L"), "png": ("RGB",)}


_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class EncodeConfig:
    format: str = "jpg"  # "jpg" | "png" | "raw" (``shards.packing.pack`` resolves "auto" before encoding)
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


def _how(cfg: EncodeConfig) -> str:
    return "lossy" if cfg.format == "jpg" else "lossless"


def encode_batch(kind: str, payload, cfg: EncodeConfig) -> list[tuple]:
    """Encode one batch (see ``shards.packing.sources.InputBatch``)."""
    if kind == "pixels":
        how = _how(cfg)
        size = tuple(payload.shape[1:3])
        return [(encode_array(img, cfg), size, how, "array") for img in payload]
    out = []
    for item in payload:
        if kind == "paths":
            try:
                with open(item, "rb") as f:
                    data = f.read()
            except OSError as e:
                out.append((None, None, f"unreadable ({e.strerror or e})", None))
                continue
        else:
            data = item
        out.append(encode_file(data, cfg))
    return out


def encode_file(data: bytes, cfg: EncodeConfig) -> tuple:
    """Bytes of an image file to the shard format; every image is fully decoded once, so a truncated
    or corrupt file is caught here rather than at training time."""
    if not data:
        return None, None, "empty file (0 bytes)", None
    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        im.load()
    except Image.DecompressionBombError:
        return None, None, "image too large (PIL decompression-bomb limit)", None
    except UnidentifiedImageError:
        # PIL's message names its in-memory buffer (<_io.BytesIO object at 0x…>), not the file
        return None, None, "not a decodable image (no known image format)", None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = _BUFFER_REPR.sub("", str(e).splitlines()[0] if str(e) else type(e).__name__).strip()
        return None, None, f"not a decodable image ({msg[:80]})", None
    size = (im.height, im.width)
    source = (fmt or "unknown").lower()
    if cfg.passthrough and _PASSTHROUGH.get(cfg.format) == fmt and im.mode in _PASSTHROUGH_MODES[cfg.format]:
        return data, size, "passthrough", source
    if im.mode != "RGB":
        im = im.convert("RGB")
    if cfg.format == "raw":
        return np.asarray(im).tobytes(), size, "lossless", source
    return _save(im, cfg), size, _how(cfg), source
