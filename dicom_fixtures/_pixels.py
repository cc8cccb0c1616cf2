"""Deterministic synthetic pixel data (ellipse phantoms plus seeded noise)."""

from __future__ import annotations

import math
import random
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned ellipse painted with a constant stored value.

    Centre and radii are fractions of the image width (x) and height (y), so
    one phantom description scales to any matrix size.
    """

    cx: float
    cy: float
    rx: float
    ry: float
    value: int


def phantom(
    rows: int,
    cols: int,
    shapes: Sequence[Ellipse],
    *,
    background: int,
    noise_bits: int,
    seed: int,
    bits_allocated: int = 16,
) -> bytes:
    """Return one little-endian frame of a synthetic phantom.

    Parameters
    ----------
    rows, cols : int
        Matrix size.
    shapes : sequence of Ellipse
        Ellipses painted in order; later ones overwrite earlier ones.
    background : int
        Stored value outside every ellipse.
    noise_bits : int
        Uniform noise in ``[0, 2**noise_bits)`` is added to every pixel
        (0 to 8 bits).
    seed : int
        Seed of the noise generator; the same seed gives the same bytes.
    bits_allocated : int, optional
        8 or 16.

    Returns
    -------
    bytes
        ``rows * cols * bits_allocated // 8`` bytes, little endian.

    Raises
    ------
    ValueError
        If a pixel value would not fit in `bits_allocated` bits.
    """
    if bits_allocated not in (8, 16):
        raise ValueError(f"bits_allocated must be 8 or 16, not {bits_allocated}")
    if not 0 <= noise_bits <= 8:
        raise ValueError(f"noise_bits must be within 0..8, not {noise_bits}")
    limit = (1 << bits_allocated) - (1 << noise_bits)
    values = [background, *(shape.value for shape in shapes)]
    if min(values) < 0 or max(values) > limit:
        raise ValueError(f"phantom values must be within 0..{limit}")

    typecode = "H" if bits_allocated == 16 else "B"
    rng = random.Random(seed)
    noise_table = bytes(b >> (8 - noise_bits) for b in range(256))
    blank = array(typecode, [background]) * cols
    out = array(typecode)
    for y in range(rows):
        row = array(typecode, blank)
        yc = (y + 0.5) / rows
        for shape in shapes:
            dy = (yc - shape.cy) / shape.ry
            if dy * dy >= 1.0:
                continue
            half = shape.rx * math.sqrt(1.0 - dy * dy) * cols
            x0 = max(0, math.ceil(shape.cx * cols - half))
            x1 = min(cols, math.floor(shape.cx * cols + half) + 1)
            if x1 > x0:
                row[x0:x1] = array(typecode, [shape.value]) * (x1 - x0)
        if noise_bits:
            row = array(typecode, map(add, row, rng.randbytes(cols).translate(noise_table)))
        out.extend(row)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def swap_words(data: bytes) -> bytes:
    """Return 16-bit little-endian samples as big endian (or vice versa).

    Parameters
    ----------
    data : bytes
        An even number of bytes.

    Returns
    -------
    bytes
        `data` with the two bytes of every word swapped.
    """
    words = array("H", data)
    words.byteswap()
    return words.tobytes()


def body_slice(z: float) -> list[Ellipse]:
    """Return an axial chest/abdomen CT phantom at relative height `z`.

    Stored values assume *Rescale Intercept* -1024 (stored 1024 is 0 HU).

    Parameters
    ----------
    z : float
        Position along the patient axis, 0.0 to 1.0; organ sizes vary with it.

    Returns
    -------
    list of Ellipse
    """
    lung = 0.13 + 0.05 * math.sin(math.pi * z)
    return [
        Ellipse(0.5, 0.52, 0.40, 0.30, 1064),  # soft tissue, ~40 HU
        Ellipse(0.5, 0.52, 0.37, 0.27, 964),  # fat layer inside, ~-60 HU
        Ellipse(0.5, 0.53, 0.34, 0.24, 1074),
        Ellipse(0.33, 0.48, lung * 0.9, lung * 1.2, 224),  # right lung, ~-800 HU
        Ellipse(0.67, 0.48, lung * 0.9, lung * 1.2, 224),  # left lung
        Ellipse(0.52, 0.50, 0.07, 0.08, 1080),  # heart
        Ellipse(0.5, 0.72, 0.035, 0.04, 2024),  # vertebral body, ~1000 HU
        Ellipse(0.5, 0.28 + 0.02 * z, 0.02, 0.015, 1824),  # sternum
    ]


def head_slice() -> list[Ellipse]:
    """Return an axial MR head phantom (T1-like stored values).

    Returns
    -------
    list of Ellipse
    """
    return [
        Ellipse(0.5, 0.5, 0.38, 0.45, 900),  # scalp
        Ellipse(0.5, 0.5, 0.35, 0.42, 250),  # skull (dark on MR)
        Ellipse(0.5, 0.5, 0.32, 0.39, 620),  # grey matter
        Ellipse(0.5, 0.5, 0.27, 0.33, 780),  # white matter
        Ellipse(0.44, 0.48, 0.03, 0.09, 180),  # lateral ventricles (CSF)
        Ellipse(0.56, 0.48, 0.03, 0.09, 180),
    ]


def chest_radiograph(scale: int) -> list[Ellipse]:
    """Return a PA chest radiograph phantom for a MONOCHROME2 image.

    Parameters
    ----------
    scale : int
        Stored value of dense bone; other tissues are fractions of it.

    Returns
    -------
    list of Ellipse
    """
    return [
        Ellipse(0.5, 0.55, 0.46, 0.50, scale * 45 // 100),  # torso
        Ellipse(0.31, 0.45, 0.15, 0.30, scale * 12 // 100),  # right lung
        Ellipse(0.69, 0.45, 0.15, 0.30, scale * 12 // 100),  # left lung
        Ellipse(0.55, 0.62, 0.13, 0.14, scale * 50 // 100),  # heart
        Ellipse(0.5, 0.50, 0.03, 0.48, scale * 80 // 100),  # spine
        Ellipse(0.5, 0.92, 0.40, 0.08, scale * 55 // 100),  # diaphragm / abdomen
        Ellipse(0.28, 0.12, 0.12, 0.015, scale * 85 // 100),  # clavicles
        Ellipse(0.72, 0.12, 0.12, 0.015, scale * 85 // 100),
    ]


def abdomen_ultrasound() -> list[Ellipse]:
    """Return an 8-bit ultrasound phantom (sector-like liver with a cyst).

    Returns
    -------
    list of Ellipse
    """
    return [
        Ellipse(0.5, 0.0, 0.45, 0.95, 70),  # insonated sector
        Ellipse(0.45, 0.45, 0.25, 0.22, 110),  # liver parenchyma
        Ellipse(0.55, 0.50, 0.06, 0.06, 8),  # anechoic cyst
        Ellipse(0.35, 0.75, 0.08, 0.03, 180),  # bright reflector
    ]
