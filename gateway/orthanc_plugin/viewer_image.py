"""The picture the Orthanc Web Viewer shows in place of a refused slice (pure).

The viewer asks ``/web-viewer/instances/<compression>-<slice>`` for each slice of a
series and draws the JSON answer. For a refused slice the plugin answers this image:
"REFUSED" in large letters on black, in the viewer's ``Deflate`` format (zlib-compressed
little-endian 16-bit grey levels), so the radiologist scrolling through the series sees
where the withheld image belongs and why it is not shown.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

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
