"""The AE allow-list with host check on the real listener: DCMTK from 127.0.0.1,
pynetdicom bound to 127.0.0.2 as the second host."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import dicom_fixtures
from gateway.core.allowlist import parse_allowed_aets
from gateway.index.db import Index
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests.integration.dicom import echoscu, storescu

ALLOWED = "CT1=127.0.0.1,CT2=10.0.0.0/8|127.0.0.2,WS1"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    index = Index(tmp_path / "index.sqlite")
    rx = Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0), index=index,
                  allowed_aets=parse_allowed_aets(ALLOWED))  # fmt: skip
    rx.start(port=free_port())
    yield rx
    rx.stop()
    index.close()


def associate(port: int, aet: str, *, source: str) -> tuple[bool, tuple[int, int, int] | None]:
    """C-ECHO as ``aet`` from ``source``: (echoed, (result, source, reason) if rejected)."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYGW", bind_address=(source, 0))
    if assoc.is_established:
        try:
            return assoc.send_c_echo().Status == 0x0000, None
        finally:
            assoc.release()
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return False, (rj.result, rj.result_source, rj.diagnostic)
    return False, None


CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)  # rejected-permanent, service user


def test_a_known_ae_from_its_own_address_is_served(receiver: Receiver, tmp_path: Path) -> None:
    assert echoscu(receiver.port, aet="CT1").returncode == 0
    files = dicom_fixtures.ct_series(tmp_path / "ct", 2, rows=64, cols=64,
                                     prefix="1.2.826.0.1.3680043.10.1012.1.")  # fmt: skip
    assert storescu(receiver.port, files, aet="CT1").returncode == 0
    assert len(receiver.index.all()) == 2
    assert associate(receiver.port, "CT2", source="127.0.0.2") == (True, None)
    assert associate(receiver.port, "WS1", source="127.0.0.2") == (True, None)  # from anywhere


def test_a_known_ae_from_another_address_is_rejected_and_the_log_says_why(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.ingest.receive"):
        assert associate(receiver.port, "CT1", source="127.0.0.2") == (
            False,
            CALLING_AE_NOT_RECOGNISED,
        )
        assert associate(receiver.port, "CT2", source="127.0.0.1") == (
            False,
            CALLING_AE_NOT_RECOGNISED,
        )
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "association rejected: calling AE CT1 from 127.0.0.2 is not allowed:"
        " CT1 may come from 127.0.0.1" in messages
    )
    assert (
        "association rejected: calling AE CT2 from 127.0.0.1 is not allowed:"
        " CT2 may come from 10.0.0.0/8, 127.0.0.2" in messages
    )
    assert echoscu(receiver.port, aet="CT1").returncode == 0  # still served from its address


def test_an_unknown_ae_is_rejected_from_anywhere(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = dicom_fixtures.ct_series(tmp_path / "x", 1, rows=64, cols=64,
                                     prefix="1.2.826.0.1.3680043.10.1012.2.")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="gateway.ingest.receive"):
        result = storescu(receiver.port, files, aet="INTRUDER")
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
        assert associate(receiver.port, "INTRUDER", source="127.0.0.2") == (
            False,
            CALLING_AE_NOT_RECOGNISED,
        )
    assert receiver.index.all() == []
    assert (
        "association rejected: calling AE INTRUDER from 127.0.0.1 is not allowed:"
        " INTRUDER is not in GATEWAY_ALLOWED_AETS" in [r.getMessage() for r in caplog.records]
    )
