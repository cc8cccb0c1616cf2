"""Deflate bombs and broken deflate against the real listener and `xray-gateway up`.

A 2 GiB deflate bomb (about 2 MB as sent) goes to the DICOM port and to ``POST
/v1/verify``; the gateway's peak RSS (``VmHWM``) must grow by less than 256 MB, the bomb is
refused with a status or a problem, and the gateway keeps serving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

import dicom_fixtures
from gateway.core.fingerprint import dataset_offset
from gateway.index.db import Index
from gateway.ingest.receive import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests import bombs
from tests.integration.dicom import echo, send_raw, storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.test_memory import peak_rss_mb

CT = "1.2.840.10008.5.1.4.1.1.2"
BOMB_BYTES = 2 << 30  # what the bomb inflates to
CAP = 1 << 30  # GATEWAY_MAX_INSTANCE_BYTES of the gateway under test: a whole GiB is inflated
GROWTH_MB = 256


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    uid = bombs.deflate_bomb(path, inflated=BOMB_BYTES)
    assert path.stat().st_size < 3 << 20  # about 2 MB as sent
    return path, uid


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up")
    gateway = Up(gateway_env(root / "var", GATEWAY_MAX_INSTANCE_BYTES=str(CAP)))
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))


def _spooled(up: Up) -> list[Path]:
    spool = up.data_dir / "spool"
    return [*(spool / "incoming").iterdir(), *(spool / "ready").iterdir()]


def test_a_deflate_bomb_over_c_store_is_refused_in_bounded_memory(
    up: Up, bomb: tuple[Path, str], fixtures: list[Path]
) -> None:
    path, uid = bomb
    spooled = set(_spooled(up))
    before = peak_rss_mb(up.pid)
    result = send_raw(
        up.dicom_port, path, sop_class=CT, transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    after = peak_rss_mb(up.pid)
    print(
        f"C-STORE of a {BOMB_BYTES >> 30} GiB deflate bomb: peak RSS {before:.0f} -> {after:.0f} MB"
    )
    assert up.proc.poll() is None
    assert after - before < GROWTH_MB, (before, after)
    assert result is not None
    assert result.Status == OUT_OF_RESOURCES, hex(result.Status)
    assert f"inflates past {CAP}" in result.ErrorComment
    assert all(row["sop_instance_uid"] != uid for row in up.rows())
    assert set(_spooled(up)) == spooled
    # still serving: a normal instance is acked and goes all the way
    ct = next(p for p in fixtures if p.name == "ct_chest_1.dcm")
    assert echo(up.dicom_port)
    sent = storescu(up.dicom_port, [ct])
    assert sent.returncode == 0, sent.stdout[-2000:]
    uid_ct = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
    rows = up.wait_done(len(up.rows()))
    assert [r["stage"] for r in rows if r["sop_instance_uid"] == uid_ct] == ["committed"]


def test_a_deflate_bomb_uploaded_to_verify_is_refused_in_bounded_memory(
    up: Up, bomb: tuple[Path, str]
) -> None:
    path, _ = bomb
    token = (up.data_dir / "api-token").read_text().strip()
    before = peak_rss_mb(up.pid)
    with httpx.Client(base_url=f"http://127.0.0.1:{up.api_port}", timeout=300) as client:
        reply = client.post(
            "/v1/verify",
            content=path.read_bytes(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"},
        )
    after = peak_rss_mb(up.pid)
    print(
        f"POST /v1/verify of a {BOMB_BYTES >> 30} GiB deflate bomb: peak RSS {before:.0f} -> {after:.0f} MB"
    )
    assert up.proc.poll() is None
    assert after - before < GROWTH_MB, (before, after)
    assert reply.status_code in (413, 422), reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert f"inflates past {CAP}" in reply.json()["detail"]


def test_a_valid_deflated_instance_is_acked_fingerprinted_and_anchored(
    up: Up, fixtures: list[Path]
) -> None:
    path = next(p for p in fixtures if p.name == "ct_chest_deflated.dcm")
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    sent = storescu(up.dicom_port, [path])
    assert sent.returncode == 0, sent.stdout[-2000:]
    rows = up.wait_done(len(up.rows()))
    (row,) = [r for r in rows if r["sop_instance_uid"] == uid]
    assert row["stage"] == "committed"
    assert row["transfer_syntax"] == DeflatedExplicitVRLittleEndian
    # the digest is of the deflated bytes as sent, exactly as before this change
    with path.open("rb") as stream:
        offset, _ = dataset_offset(stream)
    assert row["digest"] == hashlib.sha256(path.read_bytes()[offset:]).digest()
    assert row["pixel_digest"] == hashlib.sha256(dcmread(path).PixelData).digest()


BROKEN = {
    # each inflates to a header pydicom reads while the rest of the dataset cannot be filed
    "element-past-the-end": bombs.element(0x0009, 0x1010, b"OB", 1 << 20) + b"short",
    "partial-element-at-the-end": bombs.element(0x0009, 0x1010, b"OB", 0) + b"\x09\x00",
    "nested-past-its-item": bombs.element(0x0040, 0xA730, b"SQ", 16)
    + bombs.item(8)
    + bombs.element(0x0008, 0x0104, b"UT", 64)
    + bytes(64),
}


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_a_broken_deflated_dataset_is_never_acked(
    receiver: Receiver, tmp_path: Path, damage: str
) -> None:
    _, data = bombs.deflated(BROKEN[damage])
    path = tmp_path / "broken.dcm"
    path.write_bytes(data)
    result = send_raw(
        receiver.port, path, sop_class=CT, transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    assert result is not None
    assert result.Status == CANNOT_UNDERSTAND, (damage, hex(result.Status))
    assert result.ErrorComment
    assert receiver.index.all() == []
    assert list(receiver.spool.ready.iterdir()) == []
    assert list(receiver.spool.incoming.iterdir()) == []
    assert echo(receiver.port)


def test_a_deflate_bomb_may_not_inflate_into_the_spools_reserve(
    tmp_path: Path, bomb: tuple[Path, str]
) -> None:
    # the cap (4 GiB by default) is above the bomb, the room above the reserve is not
    spool = Spool(tmp_path / "spool", reserve_bytes=0)
    spool.reserve_bytes = spool.free_bytes() - (512 << 20)
    index = Index(tmp_path / "index.sqlite")
    rx = Receiver(spool=spool, index=index)
    rx.start(port=free_port())
    try:
        path, _ = bomb
        result = send_raw(
            rx.port, path, sop_class=CT, transfer_syntax=DeflatedExplicitVRLittleEndian
        )
        assert result is not None
        assert (result.Status, result.ErrorComment) == (OUT_OF_RESOURCES, "gateway spool is full")
        assert index.all() == []
        assert list(spool.ready.iterdir()) == list(spool.incoming.iterdir()) == []
        assert echo(rx.port)
    finally:
        rx.stop()
        index.close()
