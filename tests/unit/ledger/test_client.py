"""Pure parts of the ledger client: log windows and the artifact comparison."""

from __future__ import annotations

import pytest

from gateway.ledger.client import (
    DEFAULT_LOG_RANGE,
    block_windows,
    load_artifact,
    runtime_code_matches,
    strip_metadata,
)


@pytest.mark.parametrize(
    ("start", "end", "size", "windows"),
    [
        (0, 0, 5_000, [(0, 0)]),
        (0, 4_999, 5_000, [(0, 4_999)]),
        (0, 5_000, 5_000, [(0, 4_999), (5_000, 5_000)]),
        (17, 12_000, 5_000, [(17, 5_016), (5_017, 10_016), (10_017, 12_000)]),
        (10, 9, 5_000, []),  # the deployment block is past the node's head: nothing to read
        (3, 6, 1, [(3, 3), (4, 4), (5, 5), (6, 6)]),
    ],
)
def test_block_windows_cover_the_range_without_gaps_or_overlap(
    start: int, end: int, size: int, windows: list[tuple[int, int]]
) -> None:
    assert block_windows(start, end, size) == windows
    assert all(high - low < size for low, high in windows)  # Besu: to - from <= limit


def test_the_default_window_is_besus_default_limit() -> None:
    assert DEFAULT_LOG_RANGE == 5_000


def _artifact_code() -> bytes:
    return bytes.fromhex(load_artifact()["deployedBytecode"][2:])


def test_the_artifacts_own_code_matches() -> None:
    code = _artifact_code()
    assert runtime_code_matches(code, "0x" + code.hex())
    assert strip_metadata(code) != code  # solc appends a CBOR tail (ipfs hash, solc version)


def test_a_build_that_differs_only_in_its_metadata_tail_matches() -> None:
    code = _artifact_code()
    body = strip_metadata(code)
    tail = bytearray(code[len(body) :])
    tail[10] ^= 0xFF  # another source hash inside the ipfs entry: same instructions
    assert runtime_code_matches(body + bytes(tail), "0x" + code.hex())


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda code: code[:100] + bytes([code[100] ^ 1]) + code[101:], id="one-byte"),
        pytest.param(lambda code: b"", id="no-code"),
        pytest.param(lambda code: bytes.fromhex("600160005260206000f3"), id="other-contract"),
        pytest.param(lambda code: code + b"\x00", id="appended"),
    ],
)
def test_other_code_does_not_match(mangle: object) -> None:
    code = _artifact_code()
    assert callable(mangle)
    assert not runtime_code_matches(mangle(code), "0x" + code.hex())
