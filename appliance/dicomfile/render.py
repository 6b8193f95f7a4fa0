"""Rendered images (PS3.18 8.3.5, 10.4.1.1.4): a frame as a consumer JPEG or PNG.

Blocking code for worker threads. Grey-scale images go through the Modality
LUT and a VOI window (PS3.3 C.11.2.1.2: from the request, else the image's
first WindowCenter/WindowWidth, else the frame's minimum and maximum);
MONOCHROME1 is inverted; YBR is converted to RGB by the decoder; PALETTE
COLOR through its LUTs; samples wider than 8 bits are scaled down. Then an
optional crop and a resize that fits the viewport keeping the aspect ratio.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

from appliance.dicomfile import pixels

__all__ = ["DEFAULT_QUALITY", "MAX_SIDE", "THUMBNAIL_SIDE", "RenderOptions", "render", "render_file"]

# Largest rendered side: a viewport past this is refused (a 100000x100000 JPEG
# would take gigabytes to build).
MAX_SIDE = 8192
THUMBNAIL_SIDE = 128
DEFAULT_QUALITY = 90


@dataclass(frozen=True)
class RenderOptions:
    """How to render one frame."""

    media_type: str = "image/jpeg"  # or "image/png"
    viewport: tuple[int, int] | None = None  # (width, height) to fit in; 0 = free
    source: tuple[int, int, int, int] | None = None  # crop (x, y, width, height), pixels
    region: tuple[float, float, float, float] | None = None  # crop (x1, y1, x2, y2), 0..1
    quality: int = DEFAULT_QUALITY  # JPEG quality 1..100
    window: tuple[float, float, str] | None = None  # (center, width, function)


def render_file(path: str | os.PathLike, index: int, options: RenderOptions) -> bytes:
    """Render frame ``index`` (0-based) of the stored file at ``path``.

    Raises :class:`appliance.dicomfile.pixels.PixelError` when it has no pixel data
    or it cannot be decoded, IndexError when there is no such frame.
    """
    with open(path, "rb") as f:
        layout = pixels.read_layout(f)
        if not 0 <= index < layout.number_of_frames:
            raise IndexError(index)
        arr, info = pixels.decoded_frame(f, layout, index, as_rgb=True)
    return render(arr, str(info.get("photometric_interpretation", "")), layout.header, options)


def render(arr: np.ndarray, photometric: str, ds: Dataset, options: RenderOptions) -> bytes:
    """Encode one decoded frame as options.media_type."""
    image = Image.fromarray(_to_8bit(arr, photometric, ds, options.window))
    image = _crop(image, options)
    image = _fit(image, options.viewport)
    out = io.BytesIO()
    if options.media_type == "image/png":
        # Fast over small: rendered images go to a viewer on the LAN.
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, "JPEG", quality=options.quality)
    return out.getvalue()


def _to_8bit(arr: np.ndarray, photometric: str, ds: Dataset,
             window: tuple[float, float, str] | None) -> np.ndarray:
    photometric = photometric.upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2") or arr.ndim == 2 and photometric != "PALETTE COLOR":
        grey = _voi(_modality(arr, ds), ds, window)
        return 255 - grey if photometric == "MONOCHROME1" else grey
    try:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        elif photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
    except (NotImplementedError, KeyError, ValueError, TypeError, IndexError) as e:
        # A colour model pydicom cannot convert (YBR_ICT/YBR_RCT outside JPEG 2000), a
        # palette without usable LUTs: the object's fault, not a server error.
        raise pixels.PixelError(f"{photometric or 'this'} colour cannot be rendered: "
                                f"{type(e).__name__}: {str(e)[:120]}") from None
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        return np.clip(arr, 0, 255).astype(np.uint8)
    bits = int(arr.max()).bit_length() if photometric == "PALETTE COLOR" else _bits_stored(ds, arr)
    shift = max(0, bits - 8)
    return (np.clip(arr, 0, None).astype(np.uint64) >> shift).clip(0, 255).astype(np.uint8)


def _bits_stored(ds: Dataset, arr: np.ndarray) -> int:
    try:
        return int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError):
        return arr.dtype.itemsize * 8


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT / rescale (PS3.3 C.11.1); the raw values when it is unusable."""
    try:
        out = apply_modality_lut(arr, ds)
    except Exception:  # noqa: BLE001 - odd LUT or rescale values: render the stored values
        out = arr
    return out.astype(np.float64, copy=False)


def _first(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _voi(values: np.ndarray, ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """VOI LUT function (PS3.3 C.11.2.1.2) to 0..255."""
    if window is None:
        center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
        if center is not None and width is not None and width >= 1:
            function = str(ds.get("VOILUTFunction", "LINEAR")).strip().lower().replace("_", "-")
            window = (center, width, function if function in ("linear-exact", "sigmoid")
                      else "linear")
    if window is None:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if hi <= lo:
            return np.zeros(values.shape, np.uint8)
        out = (values - lo) * (255.0 / (hi - lo))
    else:
        center, width, function = window
        if function == "sigmoid":
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "linear-exact":
            out = ((values - center) / width + 0.5) * 255.0
        else:  # C.11.2.1.2.1
            out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else \
                np.where(values > center - 0.5, 255.0, 0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _crop(image: Image.Image, options: RenderOptions) -> Image.Image:
    w, h = image.size
    if options.region is not None:
        x1, y1, x2, y2 = options.region
        box = (math.floor(x1 * w), math.floor(y1 * h), math.ceil(x2 * w), math.ceil(y2 * h))
    elif options.source is not None:
        sx, sy, sw, sh = options.source
        box = (min(sx, w), min(sy, h), min(sx + sw, w), min(sy + sh, h))
    else:
        return image
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError("the requested region is outside the image")
    return image.crop(box)


def _fit(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio (either side may be 0)."""
    if viewport is None:
        return image
    w, h = image.size
    vw, vh = viewport
    scale = min(vw / w if vw else math.inf, vh / h if vh else math.inf)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
