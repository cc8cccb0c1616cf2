"""The plugin's logic without Orthanc: verdicts, the storage area's checks, settings, pictures."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import sqlite3
import tracemalloc
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import dicom_fixtures
from gateway.core.fingerprint import dataset_offset, fingerprint_bytes, read_header
from gateway.core.merkle import MerkleTree, encode_proof, leaf_hash
from gateway.errors import PluginConfigError, ReadRefused
from gateway.index.db import Index
from gateway.orthanc_plugin import meta_memo, plugin_section
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import RecordBook
from gateway.orthanc_plugin.guard import (
    DICOM,
    DICOM_UNTIL_PIXEL_DATA,
    Guard,
    orthanc_instance_id,
    serves,
)
from gateway.orthanc_plugin.ledger_mirror import LedgerMirror
from gateway.orthanc_plugin.settings import PluginSettings
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import (
    LedgerFacts,
    RetirementFacts,
    Version,
    judge,
    worst,
)
from gateway.orthanc_plugin.viewer_image import refusal_image, refusal_pixels, slice_image
from gateway.procs import PROJECT_ROOT
from gateway.trust.alerts import Alerts
from tests import bombs

UID = "1.2.3.4.5"
A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
SYNTAX = "1.2.840.10008.1.2.1"


def version(digest: bytes, n: int = 1, *, anchored: bool = True, block: int = 10) -> Version:
    return Version(
        version=n,
        digest=digest,
        pixel_digest=b"\x01" * 32,
        record_key=b"\x02" * 32,
        tx_hash="0x" + digest.hex() if anchored else None,
        block_number=block if anchored else None,
        block_time=1_700_000_000 if anchored else None,
        recorder="0x" + "11" * 20 if anchored else None,
        batch_id=None,
        leaf_index=None,
        transfer_syntax=SYNTAX,
    )


# --- verdicts ----------------------------------------------------------------------------


def test_a_copy_matching_the_anchored_version_is_intact() -> None:
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(version(A),), syntax_now=SYNTAX)
    assert (verdict.status, verdict.served) == ("intact", True)
    assert verdict.recorded is not None and verdict.recorded.digest == A
    assert "no ledger mirror configured" in verdict.ledger  # the index's evidence only


def test_a_copy_matching_no_version_is_refused_and_says_what_changed() -> None:
    for changed, words in (("pixels", "pixel data was changed"), ("header", "header")):
        verdict = judge(sop_instance_uid=UID, digest_now=B, versions=(version(A),), changed=changed)
        assert (verdict.status, verdict.served) == ("tampered", False)
        assert words in verdict.explanation
        assert "altered" in verdict.headline
        assert verdict.recorded is not None and verdict.recorded.digest == A


def test_no_record_is_unregistered_and_served_unless_it_changed_since_arrival() -> None:
    fresh = judge(sop_instance_uid=UID, digest_now=A, versions=(), arrival_digest=A)
    assert (fresh.status, fresh.served) == ("unregistered", True)
    assert "did not pass through the xray gateway" in fresh.headline
    changed = judge(sop_instance_uid=UID, digest_now=B, versions=(), arrival_digest=A)
    assert (changed.status, changed.served) == ("tampered", False)


def test_received_but_not_anchored_is_pending() -> None:
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(version(A, anchored=False),))
    assert (verdict.status, verdict.served) == ("pending", True)


def test_an_older_recorded_version_is_intact_and_says_a_newer_one_exists() -> None:
    verdict = judge(sop_instance_uid=UID, digest_now=A, versions=(version(A, 1), version(B, 2)))
    assert verdict.status == "intact"
    assert verdict.recorded is not None and verdict.recorded.version == 1
    assert "newer version (2)" in verdict.explanation


def test_the_ledger_confirms_refuses_or_retires() -> None:
    versions = (version(A),)
    confirmed = judge(
        sop_instance_uid=UID, digest_now=A, versions=versions,
        ledger={A: LedgerFacts(on_chain=True, synced_block=20)},
    )  # fmt: skip
    assert confirmed.status == "intact" and "confirmed on the ledger" in confirmed.ledger
    forged = judge(
        sop_instance_uid=UID, digest_now=A, versions=versions,
        ledger={A: LedgerFacts(on_chain=False, synced_block=20)},
    )  # fmt: skip
    assert (forged.status, forged.served) == ("tampered", False)
    assert "not on the ledger" in forged.headline
    retired = judge(
        sop_instance_uid=UID, digest_now=A, versions=versions,
        ledger={A: LedgerFacts(True, 20, RetirementFacts("0xAdmin", "wrong patient", 15, None))},
    )  # fmt: skip
    assert (retired.status, retired.served) == ("retired", True)
    assert "wrong patient" in retired.explanation and "0xAdmin" in retired.explanation


def test_a_changed_transfer_syntax_is_refused_even_with_the_same_dataset_bytes() -> None:
    verdict = judge(
        sop_instance_uid=UID, digest_now=A, versions=(version(A),), syntax_now="1.2.840.10008.1.2"
    )
    assert (verdict.status, verdict.served) == ("tampered", False)
    assert "transfer syntax" in verdict.explanation


def test_a_group_takes_its_worst_status() -> None:
    assert worst(["intact", "unregistered", "intact"]) == "unregistered"
    assert worst(["retired", "tampered", "pending"]) == "tampered"
    assert worst([]) == "intact"


# --- the storage area ---------------------------------------------------------------------


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.files = dicom_fixtures.ct_series(tmp / "in", count=2, rows=16, cols=16)
        self.index = Index(tmp / "index.sqlite")
        self.alerts = Alerts(tmp / "alerts.sqlite")
        self.logged: list[str] = []
        self.guard = Guard(
            area=FileArea(tmp / "storage", sync=False),
            catalog=Catalog(tmp / "catalog.sqlite"),
            records=RecordBook(tmp / "index.sqlite"),
            alerts=self.alerts,
            log=self.logged.append,
        )

    def record(self, path: Path) -> bytes:
        data = path.read_bytes()
        fp = fingerprint_bytes(data)
        header = read_header(io.BytesIO(data))
        row = self.index.add_received(
            entry_id=str(uuid.uuid4()), sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid, calling_aet="T", size=len(data),
        )  # fmt: skip
        self.index.update(
            row, stage="committed", digest=fp.digest, pixel_digest=fp.pixel_digest, version=1,
            tx_hash="0x" + fp.digest.hex(), block_number=3, transfer_syntax=fp.transfer_syntax,
        )  # fmt: skip
        return fp.digest

    def store(self, path: Path) -> str:
        name = str(uuid.uuid4())
        self.guard.create(name, DICOM, path.read_bytes())
        return name


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_create_keeps_orthancs_layout_and_read_serves_an_intact_file(setup: Setup) -> None:
    setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    assert (setup.tmp / "storage" / name[:2] / name[2:4] / name).read_bytes() == setup.files[
        0
    ].read_bytes()
    assert setup.guard.read(name, DICOM) == setup.files[0].read_bytes()
    assert setup.alerts.recent() == []


def test_read_refuses_a_flipped_byte_and_alerts_once_per_incident(setup: Setup) -> None:
    digest = setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    path = setup.guard.area.path(name)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    for _ in range(3):
        with pytest.raises(ReadRefused) as refused:
            setup.guard.read(name, DICOM)
    assert refused.value.verdict.status == "tampered"
    assert refused.value.verdict.changed == "pixels"
    (alert,) = setup.alerts.recent()
    assert (alert.kind, alert.source) == ("tampered", "orthanc-plugin")
    assert digest.hex() in alert.detail
    header = read_header(io.BytesIO(setup.files[0].read_bytes()))
    assert alert.orthanc_id == orthanc_instance_id(
        header.patient_id,
        header.study_instance_uid,
        header.series_instance_uid,
        header.sop_instance_uid,
    )
    # Orthanc's header-only copy of a refused instance is withheld too
    copy = str(uuid.uuid4())
    offset = bytes(data).index(b"\xe0\x7f\x10\x00")
    setup.guard.create(copy, DICOM_UNTIL_PIXEL_DATA, bytes(data[:offset]))
    with pytest.raises(ReadRefused):
        setup.guard.read(copy, DICOM_UNTIL_PIXEL_DATA)


def test_an_edited_header_copy_is_refused(setup: Setup) -> None:
    setup.record(setup.files[1])
    setup.store(setup.files[1])
    data = setup.files[1].read_bytes()
    copy = str(uuid.uuid4())
    setup.guard.create(copy, DICOM_UNTIL_PIXEL_DATA, data[: data.index(b"\xe0\x7f\x10\x00")])
    assert setup.guard.read(copy, DICOM_UNTIL_PIXEL_DATA)
    path = setup.guard.area.path(copy)
    path.write_bytes(path.read_bytes().replace(b"BENCHMARK^CT", b"SOMEONE^ELSE"))
    with pytest.raises(ReadRefused):
        setup.guard.read(copy, DICOM_UNTIL_PIXEL_DATA)


def test_an_unregistered_file_is_served_and_alerted_once(setup: Setup) -> None:
    name = setup.store(setup.files[1])
    for _ in range(3):
        assert setup.guard.read(name, DICOM) == setup.files[1].read_bytes()
    assert [a.kind for a in setup.alerts.recent()] == ["unregistered"]


def test_other_attachments_pass_through_and_remove_cleans_up(setup: Setup) -> None:
    name = str(uuid.uuid4())
    setup.guard.create(name, 2, b"{not dicom}")
    assert setup.guard.read(name, 2) == b"{not dicom}"
    setup.guard.remove(name, 2)
    assert not setup.guard.area.path(name).exists()
    assert not (setup.tmp / "storage" / name[:2]).exists()


def test_user_defined_attachments_such_as_the_dicomweb_metadata_cache_are_refused(
    setup: Setup,
) -> None:
    name = str(uuid.uuid4())
    setup.guard.create(name, 0, b'[{"00100010": "FORGED"}]')  # Orthanc 1.10 passes 4301 as 0
    with pytest.raises(ReadRefused) as refused:
        setup.guard.read(name, 0)
    assert "cannot check" in refused.value.verdict.headline
    (alert,) = setup.alerts.recent()
    assert alert.kind == "tampered" and name in alert.detail and alert.sop_instance_uid is None


def test_a_file_without_file_meta_gets_a_raw_arrival_digest(setup: Setup) -> None:
    data = setup.files[0].read_bytes()
    bare = data[dataset_offset(io.BytesIO(data))[0] :]  # no preamble, no File Meta
    name = str(uuid.uuid4())
    setup.guard.create(name, DICOM, bare)
    row = setup.guard.catalog.get(name)
    assert row is not None and row.digest is None and row.sha256 == hashlib.sha256(bare).digest()
    assert setup.guard.read(name, DICOM) == bare  # unchanged: served, as unregistered
    setup.guard.area.path(name).write_bytes(bare[:-1] + bytes([bare[-1] ^ 1]))
    with pytest.raises(ReadRefused) as refused:
        setup.guard.read(name, DICOM)
    assert refused.value.verdict.status == "tampered"
    assert "?" not in {a.sop_instance_uid for a in setup.alerts.recent()}


def test_the_arrival_digest_is_the_gateways_fingerprint_on_every_fixture(
    setup: Setup, tmp_path: Path
) -> None:
    """The plugin's digest is :mod:`gateway.core.fingerprint`'s, a lying group length too."""
    files = dicom_fixtures.generate(tmp_path / "catalogue")
    lying = bytearray(files[0].read_bytes())
    lying[140:144] = (int.from_bytes(lying[140:144], "little") + 40).to_bytes(4, "little")
    for data in [path.read_bytes() for path in files] + [bytes(lying)]:
        name = str(uuid.uuid4())
        setup.guard.create(name, DICOM, data)
        attachment = setup.guard.catalog.get(name)
        assert attachment is not None and attachment.digest == fingerprint_bytes(data).digest


def test_a_stored_copy_whose_file_meta_the_gateway_cannot_read_is_refused(setup: Setup) -> None:
    """Same dataset bytes, but a File Meta element of no known VR: the gateway's digest
    cannot be taken, so the plugin does not call the copy intact (its own walker did)."""
    setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    path = setup.guard.area.path(name)
    data = path.read_bytes()
    syntax_element = data.index(b"\x02\x00\x10\x00UI", 132)
    path.write_bytes(data[: syntax_element + 4] + b"UU" + data[syntax_element + 6 :])
    with pytest.raises(ReadRefused) as refused:
        setup.guard.read(name, DICOM)
    assert refused.value.verdict.status == "tampered"


def test_a_missing_file_is_reported_missing(setup: Setup) -> None:
    setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    setup.guard.area.path(name).unlink()
    verdict = setup.guard.inspect(name)
    assert (verdict.status, verdict.served) == ("missing", False)
    assert [a.kind for a in setup.alerts.recent()] == ["missing"]


def test_an_unreadable_index_is_served_with_a_warning(tmp_path: Path) -> None:
    (path,) = dicom_fixtures.ct_series(tmp_path / "in", count=1, rows=8, cols=8)
    alerts = Alerts(tmp_path / "alerts.sqlite")
    guard = Guard(
        area=FileArea(tmp_path / "storage", sync=False),
        catalog=Catalog(tmp_path / "catalog.sqlite"),
        records=RecordBook(tmp_path / "no-such-index.sqlite"),
        alerts=alerts,
    )
    name = str(uuid.uuid4())
    guard.create(name, DICOM, path.read_bytes())
    assert guard.read(name, DICOM) == path.read_bytes()
    assert {a.kind for a in alerts.recent()} == {"error"}


def test_attachment_names_cannot_escape_the_storage(tmp_path: Path) -> None:
    area = FileArea(tmp_path)
    for bad in ("../../etc/passwd", "ABCDEF00-0000-0000-0000-000000000000", "x" * 36):
        with pytest.raises(ValueError):
            area.path(bad)


def test_the_catalogue_survives_reopening(tmp_path: Path) -> None:
    (path,) = dicom_fixtures.ct_series(tmp_path / "in", count=1, rows=8, cols=8)
    guard = Guard(
        area=FileArea(tmp_path / "storage", sync=False), catalog=Catalog(tmp_path / "c.sqlite"),
        records=RecordBook(tmp_path / "index.sqlite"), alerts=Alerts(tmp_path / "a.sqlite"),
    )  # fmt: skip
    name = str(uuid.uuid4())
    guard.create(name, DICOM, path.read_bytes())
    guard.catalog.close()
    again = Catalog(tmp_path / "c.sqlite").get(name)
    assert (
        again is not None
        and again.sop_instance_uid == read_header(io.BytesIO(path.read_bytes())).sop_instance_uid
    )
    assert again.digest == fingerprint_bytes(path.read_bytes()).digest
    db = sqlite3.connect(tmp_path / "c.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- the ledger mirror -------------------------------------------------------------------


class FakeEvents:
    """A stand-in for web3's contract events (a pure unit test of the mirror's bookkeeping)."""

    def __init__(self, logs: dict[str, list[dict[str, Any]]]) -> None:
        self.logs = logs

    def __getattr__(self, name: str) -> Any:
        def event() -> SimpleNamespace:
            def get_logs(from_block: int, to_block: int) -> list[dict[str, Any]]:
                return [
                    log
                    for log in self.logs.get(name, [])
                    if from_block <= log["blockNumber"] <= to_block
                ]

            return SimpleNamespace(get_logs=get_logs)

        return event


RECORDER, ADMIN, ROGUE = "0x" + "11" * 20, "0x" + "aa" * 20, "0x" + "bb" * 20


def role_id(role: str) -> bytes:
    return role.encode().ljust(32, b"\x00")


def granted(role: str, account: str, block: int = 1) -> dict[str, Any]:
    args = {"role": role_id(role), "account": account}
    return {"blockNumber": block, "args": args}


def fake_chain(logs: dict[str, list[dict[str, Any]]], head: int = 10) -> SimpleNamespace:
    """A chain whose RECORDER holds the Recorder role and ADMIN the admin role from block 1."""
    roles = [granted("recorder", RECORDER), granted("admin", ADMIN)]
    logs = {**logs, "RoleGranted": roles + logs.get("RoleGranted", [])}
    for entries in logs.values():
        for n, entry in enumerate(entries):
            entry.setdefault("logIndex", n + 1)
    return SimpleNamespace(
        w3=SimpleNamespace(
            eth=SimpleNamespace(block_number=head, get_block=lambda n: {"timestamp": 123})
        ),
        contract=SimpleNamespace(events=FakeEvents(logs)),
        role_id=role_id,
    )


def recorded(key: bytes, digest: bytes, block: int, by: str = RECORDER) -> dict[str, Any]:
    args = {"recordKey": key, "digest": digest, "recorder": by}
    return {"blockNumber": block, "args": args}


def test_the_mirror_confirms_denies_or_waits() -> None:
    key = b"\x02" * 32
    logs = {
        "ImageRecorded": [recorded(key, A, 5)],
        "ImageRetired": [{"blockNumber": 9, "args": {"recordKey": key, "by": ADMIN, "reason": 3}}],
    }
    chain = fake_chain(logs)
    mirror = LedgerMirror(connect=lambda: chain)  # type: ignore[arg-type,return-value]
    assert mirror.facts(version(A, block=5)).on_chain is None  # not synced yet
    assert mirror.sync() == 10 and mirror.synced_block == 10
    on_chain = mirror.facts(version(A, block=5))
    assert (
        on_chain.on_chain is True
        and on_chain.retired is not None
        and on_chain.retired.reason == "duplicate"
    )
    assert mirror.facts(version(B, block=5)).on_chain is False  # the index claims block 5
    assert mirror.facts(version(B, block=11)).on_chain is None  # not that far yet


def test_the_mirror_confirms_a_batched_version_only_by_a_proof_that_meets_the_root() -> None:
    key, patient = b"\x02" * 32, b"\x03" * 32
    leaves = [
        leaf_hash(record_key=key, patient_key=patient, digest=A, pixel_digest=b"\x01" * 32),
        *(bytes([i]) * 32 for i in range(4, 7)),
    ]
    tree = MerkleTree(leaves)
    logs = {"BatchAnchored": [{"blockNumber": 5, "args": {"batchId": 1, "root": tree.root,
                                                           "count": 4, "recorder": RECORDER}}]}  # fmt: skip
    chain = fake_chain(logs)
    mirror = LedgerMirror(connect=lambda: chain)  # type: ignore[arg-type,return-value]
    mirror.sync()

    def batched(digest: bytes, proof: bytes | None, batch_id: int = 1) -> Version:
        return dataclasses.replace(
            version(digest, block=5), tx_hash="0xbatch", batch_id=batch_id, leaf_index=0,
            patient_key=patient, proof=proof,
        )  # fmt: skip

    good = encode_proof(tree.proof(0))
    assert mirror.facts(batched(A, good)).on_chain is True
    assert mirror.facts(batched(B, good)).on_chain is False  # a rewritten digest
    assert mirror.facts(batched(A, encode_proof(tree.proof(1)))).on_chain is False
    assert mirror.facts(batched(A, None)).on_chain is False  # no proof to check
    assert mirror.facts(batched(A, b"junk")).on_chain is False
    assert mirror.facts(batched(A, good, batch_id=2)).on_chain is False  # no such batch by block 5


def test_the_mirror_ignores_a_rogue_recorders_versions_and_retirements_of_a_batched_key(
    tmp_path: Path,
) -> None:
    """A second Recorder writes a forged digest under a batched key (recordImage, then
    supersedeImage) and retires it: the batch's recorder anchored the key first and owns it."""
    key, patient = b"\x02" * 32, b"\x03" * 32
    leaves = [
        leaf_hash(record_key=key, patient_key=patient, digest=A, pixel_digest=b"\x01" * 32),
        b"\x04" * 32,
    ]
    tree = MerkleTree(leaves)
    batch = {"batchId": 1, "root": tree.root, "count": 2, "recorder": RECORDER}
    retired = {"recordKey": key, "by": ROGUE, "reason": 1}
    logs = {
        "RoleGranted": [granted("recorder", ROGUE, block=3)],
        "BatchAnchored": [{"blockNumber": 5, "args": batch}],
        "ImageRecorded": [recorded(key, B, 6, by=ROGUE)],
        "ImageSuperseded": [recorded(key, C, 7, by=ROGUE)],
        "ImageRetired": [{"blockNumber": 8, "args": retired}],
    }
    mirror = LedgerMirror(connect=lambda: fake_chain(logs))  # type: ignore[arg-type,return-value]
    mirror.sync()
    gateway = dataclasses.replace(
        version(A, block=5), tx_hash="0xbatch", batch_id=1, leaf_index=0,
        patient_key=patient, proof=encode_proof(tree.proof(0)),
    )  # fmt: skip
    facts = mirror.facts(gateway)
    assert (facts.on_chain, facts.retired, facts.foreign) == (True, None, (ROGUE,))
    # an index row forged to match the rogue's digest is not confirmed by the ledger
    for forged_digest, block in ((B, 6), (C, 7)):
        forged = dataclasses.replace(version(forged_digest, block=block), recorder=ROGUE)
        assert mirror.facts(forged, (gateway,)).on_chain is False
    # and the guard alerts foreign_claim once per account
    alerts = Alerts(tmp_path / "alerts.sqlite")
    guard = Guard(
        area=FileArea(tmp_path / "storage", sync=False),
        catalog=Catalog(tmp_path / "catalog.sqlite"),
        records=SimpleNamespace(versions=lambda sop: (gateway,)),  # type: ignore[arg-type]
        alerts=alerts,
        ledger=mirror,
    )
    for _ in range(2):
        verdict = guard._judge("1.2.3", A, SYNTAX, b"", arrival_digest=None)
        assert verdict.status == "intact"
    (alert,) = alerts.recent()
    assert alert.kind == "foreign_claim" and ROGUE in alert.detail


def test_the_mirror_honours_a_configured_list_of_trusted_recorders() -> None:
    key = b"\x02" * 32
    logs = {"ImageRecorded": [recorded(key, A, 5)]}
    listed = LedgerMirror(
        connect=lambda: fake_chain(logs),  # type: ignore[arg-type,return-value]
        trusted_recorders=frozenset({ROGUE}),
    )
    listed.sync()
    assert listed.facts(version(A, block=5)).on_chain is False  # RECORDER is not on the list


# --- settings, section, picture -------------------------------------------------------------


def test_settings_refuse_what_would_defeat_the_check(tmp_path: Path) -> None:
    base = {
        "StorageDirectory": str(tmp_path / "storage"),
        "XrayGateway": {"DataDir": str(tmp_path)},
    }
    settings = PluginSettings.from_orthanc(base)
    assert settings.index_path == tmp_path / "index.sqlite"
    assert settings.alerts_path == tmp_path / "alerts.sqlite"
    assert settings.catalog_path == tmp_path / "xray-attachments.sqlite"
    assert settings.chain_url is None
    with pytest.raises(PluginConfigError, match="StorageCompression"):
        PluginSettings.from_orthanc({**base, "StorageCompression": True})
    with pytest.raises(PluginConfigError, match="DataDir"):
        PluginSettings.from_orthanc({"StorageDirectory": "x"})
    with pytest.raises(PluginConfigError, match="together"):
        PluginSettings.from_orthanc(
            {**base, "XrayGateway": {"DataDir": "x", "ChainUrl": "http://c"}}
        )


def test_settings_read_fail_closed_and_the_secret_and_refuse_the_dicomweb_cache(
    tmp_path: Path,
) -> None:
    section = {"DataDir": str(tmp_path)}
    settings = PluginSettings.from_orthanc({"XrayGateway": section})
    assert (settings.fail_closed, settings.stored_file_token) == (False, None)
    settings = PluginSettings.from_orthanc(
        {"XrayGateway": {**section, "FailClosed": "true", "StoredFileToken": "t" * 43}}
    )  # orthancteam's image passes ORTHANC__… values as strings
    assert (settings.fail_closed, settings.stored_file_token) == (True, "t" * 43)
    dicomweb = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
    for config in (
        {"Plugins": dicomweb},  # DICOMweb >= 1.15 caches by default
        {"DicomWeb": {"Enable": True}},
        {"DicomWeb": {"EnableMetadataCache": True}},
    ):
        with pytest.raises(PluginConfigError, match="EnableMetadataCache"):
            PluginSettings.from_orthanc({"XrayGateway": section, **config})
    PluginSettings.from_orthanc(
        {"XrayGateway": section, "Plugins": dicomweb, "DicomWeb": {"EnableMetadataCache": False}}
    )


def test_fail_closed_refuses_what_cannot_be_checked_and_says_so() -> None:
    assert serves("unverifiable", fail_closed=False) and serves("intact", fail_closed=True)
    assert not serves("unverifiable", fail_closed=True)
    assert not serves("unconfirmed", fail_closed=True)
    assert not serves("tampered", fail_closed=False)
    assert not serves("no-such-status", fail_closed=False)  # unknown: refused


def test_fail_closed_guard_refuses_and_alerts_on_an_unreadable_index(tmp_path: Path) -> None:
    (path,) = dicom_fixtures.ct_series(tmp_path / "in", count=1, rows=8, cols=8)
    alerts = Alerts(tmp_path / "alerts.sqlite")
    guard = Guard(
        area=FileArea(tmp_path / "storage", sync=False),
        catalog=Catalog(tmp_path / "catalog.sqlite"),
        records=RecordBook(tmp_path / "no-such-index.sqlite"),
        alerts=alerts,
        fail_closed=True,
    )
    name = str(uuid.uuid4())
    guard.create(name, DICOM, path.read_bytes())
    with pytest.raises(ReadRefused) as refused:
        guard.read(name, DICOM)
    assert refused.value.verdict.status == "unverifiable"
    assert refused.value.verdict.headline.startswith("Refused")
    assert {a.kind for a in alerts.recent()} == {"error"}
    assert all("refused" in a.detail for a in alerts.recent()[:1])


def test_a_slice_for_the_viewer_keeps_the_rescaled_values() -> None:
    raw = np.array([[[-1000], [0]], [[24], [2054]]], dtype=np.int16)
    image = slice_image(
        raw, {"RescaleSlope": "1", "RescaleIntercept": "-1024", "WindowCenter": ["40", "50"],
              "WindowWidth": "400", "PixelSpacing": [0.5, 0.25]},
    )  # fmt: skip
    stored = np.frombuffer(zlib.decompress(base64.b64decode(image["Orthanc"]["PixelData"])), "<u2")
    shown = stored.astype(float) * image["slope"] + image["intercept"]
    assert shown.tolist() == (raw.ravel().astype(float) - 1024).tolist()
    assert (image["windowCenter"], image["windowWidth"]) == (40.0, 400.0)
    assert (image["rowPixelSpacing"], image["columnPixelSpacing"]) == (0.5, 0.25)
    colour = slice_image(np.zeros((4, 4, 3), dtype=np.uint8), {})
    assert colour["color"] is True and colour["Orthanc"]["Compression"] == "Jpeg"


def test_the_section_puts_this_project_and_its_venv_on_orthancs_path(tmp_path: Path) -> None:
    section = plugin_section(data_dir=tmp_path, chain_url="http://c:1", contract_address="0xabc")
    assert section["SysPath"][0] == str(PROJECT_ROOT)
    assert any(Path(p, "pydicom").is_dir() for p in section["SysPath"])
    assert section["DataDir"] == str(tmp_path.resolve())
    assert (section["ChainUrl"], section["ContractAddress"]) == ("http://c:1", "0xabc")
    assert "ChainUrl" not in plugin_section(data_dir=tmp_path)


def test_the_section_carries_the_trusted_recorders_to_the_plugin(tmp_path: Path) -> None:
    recorders = frozenset({"0x" + "ab" * 20, "0x" + "cd" * 20})
    section = plugin_section(data_dir=tmp_path, trusted_recorders=recorders)
    config = {"StorageDirectory": str(tmp_path / "s"), "XrayGateway": section}
    assert PluginSettings.from_orthanc(config).trusted_recorders == recorders
    assert "TrustedRecorders" not in plugin_section(data_dir=tmp_path)
    with pytest.raises(PluginConfigError, match="TrustedRecorders"):
        PluginSettings.from_orthanc(
            {**config, "XrayGateway": {**section, "TrustedRecorders": "0x1"}}
        )


def test_the_refusal_picture_spells_refused_in_the_viewers_format() -> None:
    pixels = refusal_pixels(512, 512)
    assert len(pixels) == 512 * 512 * 2
    lit = sum(1 for i in range(0, len(pixels), 2) if pixels[i] == 255)
    assert 5_000 < lit < 512 * 512 // 4  # letters, not a blank or a white frame
    image = refusal_image()
    assert zlib.decompress(base64.b64decode(image["Orthanc"]["PixelData"])) == bytes(pixels)
    assert image["Orthanc"]["Compression"] == "Deflate" and image["color"] is False


def test_a_deflate_bomb_in_orthancs_storage_is_parsed_in_bounded_memory(setup: Setup) -> None:
    # the plugin parses every file Orthanc stores or reads: never by inflating it in memory
    bomb = setup.tmp / "bomb.dcm"
    bombs.deflate_bomb(bomb, inflated=256 << 20)
    data = bomb.read_bytes()
    tracemalloc.start()
    try:
        name = setup.store(bomb)
        served = setup.guard.read(name, DICOM)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert served == data
    assert [a.kind for a in setup.alerts.recent()] == ["unregistered"]
    assert peak < 16 << 20


def test_the_gateways_instance_cap_reaches_the_plugin_and_bounds_its_parse(
    setup: Setup, tmp_path: Path
) -> None:
    section = plugin_section(data_dir=tmp_path, max_instance_bytes=64 << 20)
    settings = PluginSettings.from_orthanc(
        {"StorageDirectory": str(tmp_path / "storage"), "XrayGateway": section}
    )
    assert settings.max_instance_bytes == 64 << 20
    guard = Guard(
        area=FileArea(tmp_path / "capped", sync=False),
        catalog=Catalog(tmp_path / "capped.sqlite"),
        records=RecordBook(setup.tmp / "index.sqlite"),
        alerts=setup.alerts,
        log=setup.logged.append,
        max_instance_bytes=settings.max_instance_bytes,
    )
    bomb = tmp_path / "bomb.dcm"
    bombs.deflate_bomb(bomb, inflated=256 << 20)
    guard.create(str(uuid.uuid4()), DICOM, bomb.read_bytes())
    assert any(f"inflates past {64 << 20} bytes" in line for line in setup.logged)


def test_settings_read_the_index_url_and_refuse_another_scheme(tmp_path: Path) -> None:
    section = {"DataDir": str(tmp_path)}
    assert PluginSettings.from_orthanc({"XrayGateway": section}).index_url is None
    url = "postgresql://xray_evidence:pw@db:5432/xray"
    settings = PluginSettings.from_orthanc({"XrayGateway": {**section, "IndexUrl": url}})
    assert settings.index_url == url
    with pytest.raises(PluginConfigError, match="IndexUrl"):
        PluginSettings.from_orthanc({"XrayGateway": {**section, "IndexUrl": "file:/x.sqlite"}})


def test_every_read_served_or_refused_is_told_and_a_failing_journal_changes_nothing(
    setup: Setup,
) -> None:
    told: list[tuple[str, str, bool]] = []
    setup.guard.on_read = lambda uuid, verdict, served: told.append((uuid, verdict.status, served))
    setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    assert told == []  # arrival is no read
    setup.guard.read(name, DICOM)
    path = setup.guard.area.path(name)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ReadRefused):
        setup.guard.read(name, DICOM)
    assert told == [(name, "intact", True), (name, "tampered", False)]

    def broken(uuid: str, verdict: object, served: bool) -> None:
        raise OSError("disk full")

    setup.guard.on_read = broken
    path.write_bytes(setup.files[0].read_bytes())
    assert setup.guard.read(name, DICOM) == setup.files[0].read_bytes()
    assert any("could not journal a read" in line for line in setup.logged)


def test_after_a_restart_the_first_reads_parse_no_file_meta_and_rewrite_no_verdict(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new guard on the same catalogue (Orthanc restarted): an intact read takes where
    the dataset starts from the catalogue and leaves the kept verdict as it was; a file
    whose File Meta or pixels changed is still refused on that very read, and its new
    verdict is kept."""
    for path in setup.files:
        setup.record(path)
    names = [setup.store(path) for path in setup.files]
    for name in names:
        setup.guard.read(name, DICOM)
    catalog_path = setup.tmp / "catalog.sqlite"
    kept = dict(sqlite3.connect(catalog_path).execute("SELECT sop_instance_uid, at FROM verdicts"))
    assert len(kept) == 2
    setup.guard.catalog.close()
    restarted = Guard(
        area=FileArea(setup.tmp / "storage", sync=False), catalog=Catalog(catalog_path),
        records=RecordBook(setup.tmp / "index.sqlite"), alerts=setup.alerts,
    )  # fmt: skip
    parses: list[int] = []
    real_offset = meta_memo.dataset_offset

    def counted(stream):  # type: ignore[no-untyped-def]
        parses.append(1)
        return real_offset(stream)

    monkeypatch.setattr(meta_memo, "dataset_offset", counted)
    assert restarted.read(names[0], DICOM) == setup.files[0].read_bytes()
    assert not parses
    after = dict(sqlite3.connect(catalog_path).execute("SELECT sop_instance_uid, at FROM verdicts"))
    assert after == kept  # the same verdict: not written again
    path = restarted.area.path(names[1])
    data = path.read_bytes()
    edited = data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00", 1)
    assert edited != data
    path.write_bytes(edited)
    with pytest.raises(ReadRefused) as refused:
        restarted.read(names[1], DICOM)
    assert refused.value.verdict.status == "tampered" and parses  # parsed afresh
    sop = refused.value.verdict.sop_instance_uid
    assert restarted.catalog.last_verdict(sop) == ("tampered", refused.value.verdict.digest_now)
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(ReadRefused):
        restarted.read(names[1], DICOM)


def test_a_catalogue_from_before_the_meta_mark_is_upgraded_and_its_rows_still_read(
    setup: Setup,
) -> None:
    """An older plugin's catalogue gains the mark's columns when it opens (twice is fine:
    another node may open it too); its rows have no mark and are parsed on read."""
    setup.record(setup.files[0])
    name = setup.store(setup.files[0])
    path = setup.tmp / "catalog.sqlite"
    setup.guard.catalog.close()
    db = sqlite3.connect(path)
    for column in ("meta_end", "meta_sha256", "meta_syntax"):
        db.execute(f"ALTER TABLE attachments DROP COLUMN {column}")
    db.commit()
    db.close()
    Catalog(path).close()
    reopened = Catalog(path)
    row = reopened.get(name)
    assert row is not None and row.meta is None and row.digest is not None
    guard = Guard(
        area=FileArea(setup.tmp / "storage", sync=False), catalog=reopened,
        records=RecordBook(setup.tmp / "index.sqlite"), alerts=setup.alerts,
    )  # fmt: skip
    assert guard.read(name, DICOM) == setup.files[0].read_bytes()
