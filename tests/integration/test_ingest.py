"""End to end on the stack `up` starts: storescu -> spool -> seal -> store -> ledger -> Orthanc.

Run once with the filesystem store and Merkle-batched anchoring (the default), and once
with S3 on a real moto server and one transaction per image (``GATEWAY_BATCH_MAX=1``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import UID

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.core.keys import load_keyring, load_pseudonym_key
from gateway.core.merkle import decode_proof
from gateway.core.seal import STUDY_KEY_VERSION, open_sealed, read_seal_header
from gateway.index.db import Index
from gateway.index.erasure import StudyKeys
from gateway.ledger import XrayLedger, leaf_hash
from gateway.store import ObjectStore, open_store
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.s3 import MotoServer

ACCESS, SECRET = "xray-test-access", "xray-test-secret-0123456789"


def valid_test_images() -> list[Path]:
    """pydicom's own test files that are storable images: Part-10, a storage SOP class,
    pixel data, valid UIDs; one file per SOP Instance UID."""
    chosen: dict[str, Path] = {}
    # The files pydicom ships in its wheel; its external test data needs a download.
    shipped = Path(pydicom.__file__).parent / "data" / "test_files"
    for path in sorted(shipped.rglob("*.dcm")):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = dcmread(path, stop_before_pixels=False)
                meta = ds.file_meta
                uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
                syntax = meta.TransferSyntaxUID
                fingerprint_bytes(path.read_bytes())
        except Exception:
            continue
        if caught:  # pydicom had to guess (wrong VR, bad lengths): not a valid file
            continue
        if "PixelData" not in ds or not sop_class.startswith("1.2.840.10008.5.1.4.1.1."):
            continue
        if not (ds.SOPInstanceUID.is_valid and ds.SOPClassUID.is_valid and syntax.is_valid):
            continue
        if not all(
            UID(str(ds.get(k, ""))).is_valid for k in ("StudyInstanceUID", "SeriesInstanceUID")
        ):
            continue  # Type 1 in every image IOD: the gateway refuses such files (0xA900)
        if str(meta.get("MediaStorageSOPInstanceUID", "")) != uid:
            continue
        # and DCMTK, the sender, must be able to read it too
        dump = subprocess.run(["/usr/bin/dcmdump", "-q", "+P", "0008,0018", str(path)],
                              capture_output=True, text=True)  # fmt: skip
        if dump.returncode != 0 or uid not in dump.stdout or "E:" in dump.stderr:
            continue
        chosen.setdefault(uid, path)
    return list(chosen.values())


@pytest.fixture(scope="module")
def sent_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    fixtures = dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))
    files = valid_test_images() + fixtures
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    assert len(set(uids)) == len(uids)
    return files


@pytest.fixture(scope="module", params=["file", "s3"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Up, ObjectStore]]:
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    moto = None
    extra: dict[str, str] = {}
    if request.param == "s3":
        moto = MotoServer(log_dir=tmp / "moto")
        moto.start()
        extra = {
            "GATEWAY_STORE_URL": f"s3://127.0.0.1:{moto.port}/xray-originals",
            "GATEWAY_S3_ACCESS_KEY": ACCESS,
            "GATEWAY_S3_SECRET_KEY": SECRET,
            "GATEWAY_BATCH_MAX": "1",  # the one-by-one anchorer the benchmark compares with
        }
    up = Up(gateway_env(tmp / "var", **extra))
    url = extra.get("GATEWAY_STORE_URL") or f"file://{(tmp / 'var' / 'objects').resolve()}"
    store = open_store(
        url, access_key=ACCESS if moto else None, secret_key=SECRET if moto else None
    )
    try:
        yield up, store
    finally:
        assert up.stop() == 0
        if moto is not None:
            moto.stop()


def orthanc_client(up: Up):  # type: ignore[no-untyped-def]
    from gateway.pacs.client import Pacs

    creds = json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text())
    return Pacs(
        f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}",
        user=creds["user"],
        password=creds["password"],
    )


def test_every_instance_is_sealed_anchored_and_in_orthanc(
    stack: tuple[Up, ObjectStore], sent_files: list[Path]
) -> None:
    up, store = stack
    result = storescu(up.dicom_port, sent_files)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = up.wait_done(len(sent_files))
    assert all(r["stage"] == "committed" for r in rows), [
        (r["id"], r["stage"], r["conflict"]) for r in rows if r["stage"] != "committed"
    ]

    keys_dir = up.data_dir / "keys"
    pseudonym = load_pseudonym_key(keys_dir)
    keyring = load_keyring(keys_dir)
    # new objects are sealed under their study's key (seal format v2), kept in the index
    index = Index(up.data_dir / "index.sqlite")
    study_keys = StudyKeys(index, keyring)
    ledger = XrayLedger.at(
        up.env.get("GATEWAY_CHAIN_URL") or f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}",
        up.value("xray contract"),
    )
    pacs = orthanc_client(up)
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    batched = up.env.get("GATEWAY_BATCH_MAX") != "1"
    if batched:  # a handful of batches, not one transaction per image
        assert len({r["batch_id"] for r in rows}) < len(rows) / 4
    differs = []
    for path in sent_files:
        sent = fingerprint_bytes(path.read_bytes())
        ds = dcmread(path, stop_before_pixels=True)
        row = by_uid[str(ds.SOPInstanceUID)]
        received = bytes(row["digest"])
        # storescu re-encodes some datasets (group lengths, item lengths) on the way out, so
        # the reference is what the gateway received; the pixel value always travels as is.
        if received != sent.digest:
            differs.append(path.name)
        assert bytes(row["pixel_digest"]) == sent.pixel_digest, path.name
        # Orthanc's copy has the same dataset digest
        orthanc_id = pacs.find(str(ds.SOPInstanceUID))
        assert orthanc_id is not None and orthanc_id == row["orthanc_id"]
        orthanc_copy = pacs.file(orthanc_id)
        assert fingerprint_bytes(orthanc_copy).digest == received, path.name
        # the stored object is not the plaintext, and opens to identical bytes
        record_key = hmac.new(
            pseudonym, b"sop:" + str(ds.SOPInstanceUID).encode(), hashlib.sha256
        ).digest()
        assert bytes(row["record_key"]) == record_key
        with store.open(f"{record_key.hex()}/{received.hex()}") as sealed_stream:
            sealed = sealed_stream.read()
        dataset = orthanc_copy[fingerprint_bytes(orthanc_copy).dataset_offset :]
        assert dataset[-4096:] not in sealed and dataset[:256] not in sealed
        assert read_seal_header(io.BytesIO(sealed)).version == STUDY_KEY_VERSION, path.name
        plain = io.BytesIO()
        open_sealed(
            io.BytesIO(sealed), plain, record_key=record_key, digest=received, keyring=keyring,
            study_keys=study_keys,
        )  # fmt: skip
        opened = fingerprint_bytes(plain.getvalue())
        assert plain.getvalue()[opened.dataset_offset :] == dataset, path.name
        # the ledger holds digest and pixel digest under the right keys: in a Merkle batch
        # (the default), the leaf of exactly these values leads to the root on chain
        issuer = str(ds.get("IssuerOfPatientID", "") or "").rstrip(" \x00")
        patient = str(ds.get("PatientID", "") or "").rstrip(" \x00")
        patient_key = hmac.new(
            pseudonym, f"patient:{issuer}|{patient}".encode(), hashlib.sha256
        ).digest()
        image = ledger.image_of(record_key)
        if batched:
            assert image is None, path.name  # no per-image transaction
            leaf = leaf_hash(
                record_key=record_key, patient_key=patient_key, digest=received,
                pixel_digest=sent.pixel_digest,
            )  # fmt: skip
            proof = decode_proof(bytes(row["proof"]))
            assert proof.index == row["leaf_index"], path.name
            assert ledger.verify_batch_member(leaf=leaf, proof=proof, batch_id=row["batch_id"])
        else:
            assert image is not None and row["batch_id"] is None, path.name
            assert (image.current.digest, image.current.pixel_digest) == (
                received, sent.pixel_digest,
            )  # fmt: skip
            assert image.current.patient_key == patient_key
            assert image.versions == 1
    index.close()
    # our own fixtures are plain Part-10 that storescu sends unchanged
    fixture_names = {f.name for f in sent_files if "pydicom" not in str(f)}
    assert not fixture_names & set(differs), differs


def test_the_same_file_twice_is_one_object_and_one_record(
    stack: tuple[Up, ObjectStore], sent_files: list[Path]
) -> None:
    up, store = stack
    path = sent_files[-1]
    before = len(up.rows())
    for _ in range(2):
        assert storescu(up.dicom_port, [path]).returncode == 0
    rows = up.wait_done(before + 2)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    mine = [r for r in rows if r["sop_instance_uid"] == uid]
    assert sorted(r["stage"] for r in mine).count("committed") == 1
    record_key = bytes(mine[0]["record_key"])
    assert len(list(store.names(record_key.hex()))) == 1
    ledger = XrayLedger.at(
        f"http://127.0.0.1:{up.env['GATEWAY_ANVIL_PORT']}", up.value("xray contract")
    )
    recorded = ledger.events("ImageRecorded", filters={"recordKey": record_key})
    if up.env.get("GATEWAY_BATCH_MAX") == "1":
        assert len(recorded) == 1
    else:  # one leaf in one batch, no per-image record
        anchored = [r for r in mine if r["batch_id"] is not None]
        assert len(anchored) == 1 and anchored[0]["proof"] is not None
        assert ledger.batch_of(anchored[0]["batch_id"]).count >= 1
        assert recorded == []
    assert ledger.events("ImageSuperseded", filters={"recordKey": record_key}) == []


def test_no_phi_in_object_names_or_logs(
    stack: tuple[Up, ObjectStore], sent_files: list[Path]
) -> None:
    up, store = stack
    names = list(store.names())
    assert names and all(len(n) == 129 for n in names)
    log = (up.data_dir.parent / "up.log").read_text()
    for path in sent_files[-5:]:
        ds = dcmread(path, stop_before_pixels=True)
        for value in (ds.get("PatientName"), ds.get("PatientID"), ds.get("PatientBirthDate")):
            text = str(value or "").strip()
            if len(text) >= 4:
                assert text not in log
                assert all(text not in n for n in names)
