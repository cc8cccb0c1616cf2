"""Separated trust domains on a real `xray-gateway up` (anvil, Orthanc with the plugin, DCMTK).

- A spool file swapped after the C-STORE was acknowledged, before the pipeline reads it,
  is refused: an alert, the row parked, nothing sealed, stored or anchored. The pipeline
  is held at that point by a failpoint (``pipeline.before_fingerprint``, released by a
  file); an unswapped file sent next goes through.
- The embedded Orthanc's plugin holds the gateway's index file open read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core import keys
from gateway.core.keys import load_pseudonym_key
from gateway.store.fs import FilesystemStore
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.ledger_records import records_of
from tests.integration.test_verify import admin_token, api, ledger_admin

STUDY = "1.2.826.0.1.3680043.10.1138.12.1"


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small CT slices: the acked one, the one swapped in for it, one sent unswapped."""
    return dicom_fixtures.ct_series(
        tmp_path_factory.mktemp("trust-series"), 3, rows=64, cols=64, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.12.2.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file whose creation lets the held pipeline go on."""
    return tmp_path_factory.mktemp("failpoint") / "release"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, release: Path) -> Iterator[Up]:
    env = gateway_env(
        tmp_path_factory.mktemp("trust") / "var",
        GATEWAY_FAILPOINT="pipeline.before_fingerprint",
        GATEWAY_FAILPOINT_RELEASE=str(release),
    )
    stack = Up(env)
    try:
        yield stack
    finally:
        release.touch()  # never leave a pipeline thread held
        assert stack.stop() == 0


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def row_of(up: Up, uid: str) -> sqlite3.Row | None:
    return next((r for r in up.rows() if r["sop_instance_uid"] == uid), None)


def wait_for(up: Up, uid: str, stages: tuple[str, ...], *, timeout: float = 300) -> sqlite3.Row:
    """Wait (generously) until the UID's row reaches one of ``stages``."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = row_of(up, uid)
        if row is not None and row["stage"] in stages:
            return row
        time.sleep(0.2)
    raise AssertionError(f"{uid} never reached {stages}: {dict(row) if row else None}")


def test_a_spool_file_swapped_after_the_ack_is_refused_and_never_sealed(
    up: Up, slices: list[Path], release: Path
) -> None:
    acked, forged = slices[0], slices[1]
    uid = uid_of(acked)

    sent = storescu(up.dicom_port, [acked], aet="CT1")
    assert sent.returncode == 0, sent.stdout[-2000:]  # acked: the modality may delete it now
    held = wait_for(up, uid, ("fingerprint",))
    spooled = up.data_dir / "spool" / "ready" / f"{held['entry_id']}.dcm"
    # what was acked: the listener's hash of the file as it arrived
    assert hashlib.sha256(spooled.read_bytes()).digest() == held["spool_sha256"]
    spooled.write_bytes(forged.read_bytes())  # as anyone who can write spool/ready/ could
    release.touch()

    row = wait_for(up, uid, ("failed",))
    assert row["parked_stage"] == "fingerprint"
    assert "changed after the ack" in row["last_error"]
    assert row["digest"] is None and row["tx_hash"] is None and row["object_name"] is None
    assert spooled.read_bytes() == forged.read_bytes()  # kept as evidence
    assert not (up.data_dir / "sealed" / f"{held['entry_id']}.seal").exists()
    record_key = keys.record_key(load_pseudonym_key(up.data_dir / "keys"), uid)
    store = FilesystemStore(up.data_dir / "objects")
    assert list(store.names(record_key.hex())) == []
    assert records_of(up.data_dir / "index.sqlite", ledger_admin(up), uid, record_key) == 0
    with api(up, admin_token(up)) as client:
        alerts = client.get("/v1/alerts", params={"kind": "spool_swapped"})
        assert alerts.status_code == 200, alerts.text
        (alert,) = alerts.json()["items"]
        assert alert["sop_instance_uid"] == uid and alert["source"] == "pipeline"
        verdict = client.get(f"/v1/instances/{uid}/verify")
        assert verdict.status_code != 200 or verdict.json()["status"] != "intact"


def test_an_unswapped_file_goes_through(up: Up, slices: list[Path], release: Path) -> None:
    release.touch()  # the failpoint held only the first image
    uid = uid_of(slices[2])

    sent = storescu(up.dicom_port, [slices[2]], aet="CT1")
    assert sent.returncode == 0, sent.stdout[-2000:]

    wait_for(up, uid, ("committed",))
    with api(up, admin_token(up)) as client:
        verdict = client.get(f"/v1/instances/{uid}/verify")
        assert verdict.status_code == 200, verdict.text
        assert verdict.json()["status"] == "intact"


def test_the_plugin_holds_the_gateway_index_read_only(up: Up, slices: list[Path]) -> None:
    """After the plugin has checked a read, Orthanc's descriptors of index.sqlite are all
    O_RDONLY, and its connection is SQLite's read-only one (``mode=ro``).

    The ``-wal`` is another matter on this one-user stack: SQLite opens a WAL read-write
    whenever the OS lets it, even for a read-only connection. The OS-level guarantee is
    the docker deployment's (a read-only mount, files the group cannot write).
    """
    row = wait_for(up, uid_of(slices[2]), ("committed",))
    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    base = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
    served = httpx.get(
        f"{base}/instances/{row['orthanc_id']}/file",
        auth=(creds["user"], creds["password"]),
        timeout=60,
    )
    assert served.status_code == 200  # checked against the index: the plugin has it open
    pid = int(json.loads((up.data_dir / "orthanc" / "orthanc.pid").read_text())["pid"])
    index = (up.data_dir / "index.sqlite").resolve()

    modes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        except (OSError, IndexError):
            continue  # closed meanwhile
        if target == str(index):
            modes[fd] = (target, int(flags, 8) & os.O_ACCMODE)

    assert modes, "Orthanc has no descriptor of the gateway's index"
    assert {mode for _, mode in modes.values()} == {os.O_RDONLY}, modes
