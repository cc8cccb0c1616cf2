"""The images the Orthanc Web Viewer shows: checked slices, and the refusal picture (pure).

The viewer asks ``/web-viewer/instances/<compression>-<slice>`` for each slice of a
series and draws the JSON answer. The plugin answers that route itself, so the viewer's
own cache of decoded images (a directory of files nobody checks) is never served:

- a served slice is :func:`slice_image`: the frame Orthanc decodes through the checking
  storage area, in the viewer's ``Deflate`` format (zlib-compressed little-endian 16-bit
  grey levels; colour frames as JPEG), with the display attributes of the checked file;
- a refused slice is :func:`refusal_image`: "REFUSED" in large letters on black, so the
  radiologist scrolling through the series sees where the withheld image belongs and why
  it is not shown.
"""

from __future__ import annotations

import base64
import io
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

# 5x7 glyphs of the letters needed, one string per row ("#" = lit).
GLYPHS = {
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
}
WORD = "REFUSED"
WHITE = 255


def refusal_pixels(width: int, height: int) -> bytearray:
    """16-bit little-endian grey levels: ``WORD`` in white, centred, on black."""
    pixels = bytearray(width * height * 2)
    columns = len(WORD) * 6 - 1  # 5 columns per glyph, 1 between glyphs
    scale = max(1, min((width * 8 // 10) // columns, (height // 3) // 7))
    left = (width - columns * scale) // 2
    top = (height - 7 * scale) // 2
    for n, letter in enumerate(WORD):
        for row, line in enumerate(GLYPHS[letter]):
            for col, cell in enumerate(line):
                if cell != "#":
                    continue
                x0 = left + (n * 6 + col) * scale
                y0 = top + row * scale
                for y in range(y0, y0 + scale):
                    start = (y * width + x0) * 2
                    pixels[start : start + 2 * scale : 2] = bytes([WHITE]) * scale
    return pixels


def refusal_image(width: int = 512, height: int = 512) -> dict[str, Any]:
    """The Web Viewer's JSON for the refusal picture."""
    data = zlib.compress(bytes(refusal_pixels(width, height)))
    return {
        "Orthanc": {
            "Compression": "Deflate",
            "IsSigned": False,
            "PhotometricInterpretation": "MONOCHROME2",
            "PixelData": base64.b64encode(data).decode(),
        },
        "color": False,
        "columns": width,
        "rows": height,
        "width": width,
        "height": height,
        "columnPixelSpacing": 1.0,
        "rowPixelSpacing": 1.0,
        "intercept": 0.0,
        "slope": 1.0,
        "minPixelValue": 0,
        "maxPixelValue": WHITE,
        "windowCenter": 128.0,
        "windowWidth": 256.0,
        "sizeInBytes": width * height * 2,
    }


def _first(value: Any, default: float) -> float:
    """The first number of a possibly multi-valued DICOM attribute (``"40\\400"``)."""
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)):
        value = value[0] if value else default
    try:
        number = float(str(value).split("\\")[0])
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def slice_image(pixels: np.ndarray[Any, Any], attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The viewer's JSON for one decoded frame.

    Parameters
    ----------
    pixels:
        The frame as Orthanc decodes it without rescaling (``/frames/<n>/numpy?rescale=0``):
        rows x columns x samples.
    attributes:
        Display attributes of the checked file: ``RescaleSlope``, ``RescaleIntercept``,
        ``WindowCenter``, ``WindowWidth``, ``PixelSpacing`` (missing ones take defaults).
    """
    frame = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    rows, columns, samples = frame.shape
    spacing = attributes.get("PixelSpacing") or (1.0, 1.0)
    row_spacing = _first(spacing, 1.0)
    column_spacing = _first(spacing[1:] if isinstance(spacing, (list, tuple)) else spacing, 1.0)
    common = {
        "columns": columns, "rows": rows, "width": columns, "height": rows,
        "columnPixelSpacing": column_spacing, "rowPixelSpacing": row_spacing,
    }  # fmt: skip
    if samples >= 3:
        jpeg = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame[..., :3]).astype(np.uint8)).save(
            jpeg, "JPEG", quality=95
        )
        return {
            "Orthanc": {
                "Compression": "Jpeg", "IsSigned": False, "Stretched": False,
                "PhotometricInterpretation": "RGB",
                "PixelData": base64.b64encode(jpeg.getvalue()).decode(),
            },
            "color": True, **common, "intercept": 0.0, "slope": 1.0,
            "minPixelValue": 0, "maxPixelValue": 255, "windowCenter": 127.5,
            "windowWidth": 256.0, "sizeInBytes": rows * columns * 3,
        }  # fmt: skip
    grey = frame[..., 0].astype(np.int64)
    low = int(grey.min()) if grey.size else 0
    shifted = np.clip(grey - low, 0, 0xFFFF).astype("<u2")  # unsigned, as the viewer wants
    slope = _first(attributes.get("RescaleSlope"), 1.0) or 1.0
    intercept = _first(attributes.get("RescaleIntercept"), 0.0) + slope * low
    high = int(shifted.max()) if shifted.size else 0
    centre = _first(attributes.get("WindowCenter"), intercept + slope * high / 2)
    width = _first(attributes.get("WindowWidth"), max(1.0, slope * high))
    return {
        "Orthanc": {
            "Compression": "Deflate", "IsSigned": False,
            "PhotometricInterpretation": "MONOCHROME2",
            "PixelData": base64.b64encode(zlib.compress(shifted.tobytes())).decode(),
        },
        "color": False, **common, "intercept": intercept, "slope": slope,
        "minPixelValue": 0, "maxPixelValue": high, "windowCenter": centre,
        "windowWidth": width, "sizeInBytes": rows * columns * 2,
    }  # fmt: skip
