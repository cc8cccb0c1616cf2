"""Byte-level mutation operators (pure): each takes bytes and a seeded RNG, returns new bytes."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Length values that break parsers: zero, odd, just past the end, the largest 16/32-bit.
HUGE_LENGTHS = (0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0x10000000, 0x00FFFFFF)


@dataclass(frozen=True)
class LengthField:
    """Where a length is encoded: ``offset`` into the bytes, ``size`` 2 or 4, big-endian?"""

    offset: int
    size: int
    big_endian: bool = True


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    """Flip 1-8 random bits."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    """Insert 1-64 random bytes at a random offset."""
    pos = rng.randint(0, len(data))
    return data[:pos] + rng.randbytes(rng.randint(1, 64)) + data[pos:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    """Delete 1-64 bytes at a random offset."""
    if not data:
        return data
    pos = rng.randrange(len(data))
    return data[:pos] + data[pos + rng.randint(1, 64) :]


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the bytes short at a random offset."""
    return data[: rng.randint(0, max(0, len(data) - 1))]


def overwrite_random(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a random run of 1-256 bytes with random bytes."""
    if not data:
        return rng.randbytes(rng.randint(1, 256))
    pos = rng.randrange(len(data))
    run = rng.randbytes(min(rng.randint(1, 256), len(data) - pos))
    return data[:pos] + run + data[pos + len(run) :]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    """Repeat a random chunk of up to 512 bytes in place, 1-4 times."""
    if not data:
        return data
    pos = rng.randrange(len(data))
    chunk = data[pos : pos + rng.randint(1, 512)]
    return data[:pos] + chunk * rng.randint(2, 5) + data[pos + len(chunk) :]


def set_length(data: bytes, field: LengthField, value: int) -> bytes:
    """Write ``value`` (truncated to the field's size) into a length field."""
    fmt = (">" if field.big_endian else "<") + ("H" if field.size == 2 else "L")
    value &= (1 << (8 * field.size)) - 1
    end = field.offset + field.size
    if end > len(data):
        return data
    return data[: field.offset] + struct.pack(fmt, value) + data[end:]


def corrupt_length(data: bytes, fields: Sequence[LengthField], rng: random.Random) -> bytes:
    """Set one of ``fields`` to a wrong value: off by a little, zero, or huge."""
    if not fields:
        return bit_flips(data, rng)
    field = rng.choice(fields)
    fmt = (">" if field.big_endian else "<") + ("H" if field.size == 2 else "L")
    end = field.offset + field.size
    if end > len(data):
        return data
    (current,) = struct.unpack(fmt, data[field.offset : end])
    choice = rng.randrange(4)
    if choice == 0:
        value = current + rng.choice((-2, -1, 1, 2, 3, 7, 256))
    elif choice == 1:
        value = 0
    elif choice == 2:
        value = rng.choice(HUGE_LENGTHS)
    else:
        value = rng.getrandbits(8 * field.size)
    return set_length(data, field, value)


#: The operators that need nothing but the bytes.
BLIND: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    bit_flips,
    insert_bytes,
    delete_bytes,
    truncate,
    overwrite_random,
    duplicate_chunk,
)


def mutate(
    data: bytes,
    rng: random.Random,
    *,
    fields: Sequence[LengthField] = (),
    rounds: int | None = None,
    focus: int | None = None,
) -> tuple[bytes, list[str]]:
    """Apply 1-3 operators (length corruption when ``fields`` are known); returns bytes and names.

    ``focus`` keeps the blind operators within the first ``focus`` bytes most of the time
    (where the structure is: headers rather than pixel values), the rest untouched.
    """
    names: list[str] = []
    for _ in range(rounds if rounds is not None else rng.randint(1, 3)):
        if fields and rng.random() < 0.35:
            data = corrupt_length(data, fields, rng)
            names.append("length")
            continue
        operator = rng.choice(BLIND)
        if focus is not None and len(data) > focus and rng.random() < 0.8:
            head = operator(data[:focus], rng)
            data = head + data[focus:]
        else:
            data = operator(data, rng)
        names.append(operator.__name__)
    return data, names
