"""The storage area's logic: write what Orthanc creates, check what it reads, explain refusals.

Orthanc calls ``create``/``read``/``remove`` for every attachment; only DICOM files
(content type 1) and Orthanc's header-only copies of them (type 3, "DICOM until pixel
data", which Orthanc keeps for a storage area that cannot read ranges) are checked;
every other attachment passes through.

- ``create`` writes the file first (Orthanc must never lose what it was given), then
  learns which instance it is: SOP Instance UID, Orthanc's id and the dataset digest,
  kept in the :class:`~gateway.orthanc_plugin.catalog.Catalog`. An instance arriving
  without a record is alerted as ``unregistered`` right away.
- ``read`` hashes the dataset bytes it has just read (the digest of
  :mod:`gateway.fingerprint`), judges them against the gateway's records
  (:mod:`~gateway.orthanc_plugin.verdict`) and raises :class:`Refused` for content that
  must not leave the PACS. Orthanc then fails the request (500 on ``/file``, 415 on
  ``/preview``, a failed sub-operation on C-GET/C-MOVE).
- A header-only copy (type 3) is checked against the SHA-256 recorded when Orthanc made it
  from the full file; it is refused as well once its instance was found tampered.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gateway.errors import DatasetUnreadable
from gateway.fingerprint import MAX_INSTANCE_BYTES, dataset_offset, fingerprint_bytes, read_header
from gateway.orthanc_plugin.catalog import Attachment, Catalog
from gateway.orthanc_plugin.records import IndexUnavailable, RecordBook
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import (
    PENDING_ALERT_S,
    LedgerFacts,
    Verdict,
    Version,
    judge,
    missing,
    unverifiable,
)

DICOM = 1  # OrthancPluginContentType_Dicom
DICOM_UNTIL_PIXEL_DATA = 3  # OrthancPluginContentType_DicomUntilPixelData
SOURCE = "orthanc-plugin"


class Refused(Exception):
    """Raised in ``read``: Orthanc fails the request instead of serving these bytes."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(
            f"xray-gateway refused SOP Instance {verdict.sop_instance_uid}: {verdict.status}. "
            f"{verdict.headline}"
        )
        self.verdict = verdict


class AlertSink(Protocol):
    """Where alerts go: :class:`gateway.alerts.Alerts` in production."""

    def record(
        self,
        *,
        kind: str,
        source: str,
        detail: str,
        sop_instance_uid: str | None = None,
        orthanc_id: str | None = None,
    ) -> int: ...


class LedgerView(Protocol):
    """What the ledger says about a recorded version: :class:`LedgerMirror` in production."""

    def facts(self, version: Version) -> LedgerFacts: ...


# Explicit VR Little Endian VRs with a 2-byte reserved field and a 4-byte length
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def _walk_meta(data: bytes) -> tuple[int, str] | None:
    """Dataset offset and Transfer Syntax UID, walking the File Meta elements.

    The File Meta is always explicit VR little endian, group 0002, read element by
    element until the first element of another group, as pydicom reads it (the group
    length is not trusted). Anything unusual returns None and pydicom decides.
    """
    end = len(data)
    if end < 132 or data[128:132] != b"DICM":
        return None
    pos, syntax = 132, None
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 2:
            return (pos, syntax) if syntax else None
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            length, value = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        elif vr.isalpha() and vr.isupper():
            length, value = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        else:
            return None
        if length == 0xFFFFFFFF or value + length > end:
            return None
        if element == 0x0010:
            syntax = data[value : value + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value + length
    return None


def dataset_fingerprint(data: bytes) -> tuple[bytes, str]:
    """SHA-256 of the dataset bytes, File Meta excluded (:func:`gateway.fingerprint.fingerprint`'s
    digest), and the Transfer Syntax UID the File Meta declares.

    Raises
    ------
    DatasetUnreadable
        When the File Meta cannot be read.
    """
    walked = _walk_meta(data)
    if walked is None:
        offset, uid = dataset_offset(io.BytesIO(data))
        walked = (offset, str(uid))
    offset, syntax = walked
    return hashlib.sha256(memoryview(data)[offset:]).digest(), syntax


def dataset_digest(data: bytes) -> bytes:
    """SHA-256 of the dataset bytes, File Meta excluded."""
    return dataset_fingerprint(data)[0]


def orthanc_instance_id(
    patient_id: str, study_uid: str, series_uid: str, sop_instance_uid: str
) -> str:
    """Orthanc's id of an instance: SHA-1 of the four identifiers, in five dashed groups."""
    sha = hashlib.sha1(
        f"{patient_id}|{study_uid}|{series_uid}|{sop_instance_uid}".encode(),
        usedforsecurity=False,
    ).hexdigest()
    return "-".join(sha[i : i + 8] for i in range(0, 40, 8))


class Guard:
    """Checks every DICOM read against the gateway's records and the ledger mirror.

    Parameters
    ----------
    area:
        Orthanc's files on disk.
    catalog:
        The plugin's attachment catalogue.
    records:
        The gateway's index, read-only.
    alerts:
        Where refusals and warnings are recorded.
    ledger:
        The ledger mirror, or ``None`` to rely on the index's anchor evidence only.
    log:
        Orthanc's log (``orthanc.LogWarning``); messages name instances by UID only.
    repeat_after:
        Seconds before the same refusal of the same copy is alerted again: a viewer asks
        for an image several times and one altered copy is one incident.
    max_instance_bytes:
        The most bytes a deflated dataset may inflate to while it is parsed (the gateway's
        ``GATEWAY_MAX_INSTANCE_BYTES``); it is inflated into a temporary file, never in memory.
    pending_alert_s:
        A received copy not anchored after this many seconds is ``unconfirmed`` and alerted
        (``GATEWAY_PENDING_ALERT_S``).
    """

    def __init__(
        self,
        *,
        area: FileArea,
        catalog: Catalog,
        records: RecordBook,
        alerts: AlertSink,
        ledger: LedgerView | None = None,
        log: Callable[[str], None] = lambda message: None,
        repeat_after: float = 600.0,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        pending_alert_s: float = PENDING_ALERT_S,
    ) -> None:
        self.max_instance_bytes = max_instance_bytes
        self.pending_alert_s = pending_alert_s
        self.area = area
        self.catalog = catalog
        self.records = records
        self.alerts = alerts
        self.ledger = ledger
        self.log = log
        self.repeat_after = repeat_after
        self._alerted: dict[tuple[str, str, bytes], float] = {}
        self._statuses: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- the storage area callbacks -------------------------------------------------------

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        """Write the attachment, then learn which instance it is (never fails the store for that)."""
        self.area.write(uuid, data)
        try:
            if content_type == DICOM:
                self._learn_dicom(uuid, data)
            elif content_type == DICOM_UNTIL_PIXEL_DATA:
                self._learn_header_copy(uuid, data)
        except Exception as exc:  # the file is stored; reads will parse it again
            self.log(
                f"xray-gateway: could not catalogue attachment {uuid}: {type(exc).__name__}: {exc}"
            )

    def read(self, uuid: str, content_type: int) -> bytes:
        """Read the attachment; raise :class:`Refused` if it must not be served."""
        data = self.area.read(uuid)
        if content_type == DICOM:
            verdict = self.check(uuid, data)
            if not verdict.served:
                raise Refused(verdict)
        elif content_type == DICOM_UNTIL_PIXEL_DATA:
            self._check_header_copy(uuid, data)
        return data

    def remove(self, uuid: str, content_type: int) -> None:
        self.area.remove(uuid)
        self.catalog.remove(uuid)

    # -- learning at create ----------------------------------------------------------------

    def _learn_dicom(self, uuid: str, data: bytes) -> None:
        header = read_header(io.BytesIO(data), limit=self.max_instance_bytes)
        digest, syntax = dataset_fingerprint(data)
        attachment = Attachment(
            uuid=uuid,
            content_type=DICOM,
            sop_instance_uid=header.sop_instance_uid,
            orthanc_id=orthanc_instance_id(
                header.patient_id,
                header.study_instance_uid,
                header.series_instance_uid,
                header.sop_instance_uid,
            ),
            sha256=None,
            digest=digest,
        )
        self.catalog.put(attachment)
        verdict = self._judge(header.sop_instance_uid, digest, syntax, data, arrival_digest=digest)
        self._after(verdict, attachment.orthanc_id, on="arrival")

    def _learn_header_copy(self, uuid: str, data: bytes) -> None:
        header = read_header(io.BytesIO(data), limit=self.max_instance_bytes)
        orthanc_id = orthanc_instance_id(
            header.patient_id, header.study_instance_uid,
            header.series_instance_uid, header.sop_instance_uid,
        )  # fmt: skip
        self.catalog.put(
            Attachment(
                uuid=uuid,
                content_type=DICOM_UNTIL_PIXEL_DATA,
                sop_instance_uid=header.sop_instance_uid,
                orthanc_id=orthanc_id,
                sha256=hashlib.sha256(data).digest(),
                digest=None,
            )
        )

    # -- checking --------------------------------------------------------------------------

    def check(self, uuid: str, data: bytes, *, orthanc_id: str | None = None) -> Verdict:
        """Judge the DICOM file ``data`` stored as ``uuid`` (and record alerts)."""
        attachment = self.catalog.get(uuid)
        sop = attachment.sop_instance_uid if attachment is not None else None
        orthanc_id = orthanc_id or (attachment.orthanc_id if attachment is not None else None)
        try:
            digest, syntax = dataset_fingerprint(data)
        except DatasetUnreadable as exc:
            verdict = self._unreadable(sop, str(exc))
            self._after(verdict, orthanc_id, on="read")
            return verdict
        if sop is None:
            try:
                header = read_header(io.BytesIO(data), limit=self.max_instance_bytes)
            except DatasetUnreadable as exc:
                verdict = unverifiable("?", f"the stored file cannot be parsed ({exc})")
                self._after(verdict, orthanc_id, on="read")
                return verdict
            sop = header.sop_instance_uid
            orthanc_id = orthanc_id or orthanc_instance_id(
                header.patient_id, header.study_instance_uid,
                header.series_instance_uid, header.sop_instance_uid,
            )  # fmt: skip
            self.catalog.put(Attachment(uuid, DICOM, sop, orthanc_id, None, None))
        arrival = attachment.digest if attachment is not None else None
        verdict = self._judge(sop, digest, syntax, data, arrival_digest=arrival)
        self._after(verdict, orthanc_id, on="read")
        return verdict

    def _judge(
        self, sop: str, digest: bytes, syntax: str, data: bytes, *, arrival_digest: bytes | None
    ) -> Verdict:
        try:
            versions = self.records.versions(sop)
        except IndexUnavailable as exc:
            return unverifiable(sop, f"The gateway's records cannot be read ({exc})")
        # Without a mirror there are no facts at all (the index's evidence only); with
        # one, a version it has no facts for is unconfirmed.
        facts: dict[bytes, LedgerFacts] | None = None
        if self.ledger is not None:
            facts = {}
            for version in versions:
                if version.anchored:
                    facts[version.digest] = self.ledger.facts(version)
        changed = None
        if versions and not any(v.digest == digest for v in versions):
            changed = self._what_changed(data, versions[-1])
        return judge(
            sop_instance_uid=sop, digest_now=digest, versions=versions, ledger=facts,
            changed=changed, arrival_digest=arrival_digest, syntax_now=syntax,
            pending_alert_s=self.pending_alert_s,
        )  # fmt: skip

    def _what_changed(self, data: bytes, recorded: Version) -> str | None:
        """``"pixels"`` or ``"header"``, comparing pixel digests (only for refused copies)."""
        if recorded.pixel_digest is None:
            return None
        try:
            pixel_digest = fingerprint_bytes(data, limit=self.max_instance_bytes).pixel_digest
        except DatasetUnreadable:
            return None
        return "header" if pixel_digest == recorded.pixel_digest else "pixels"

    def _unreadable(self, sop: str | None, reason: str) -> Verdict:
        """A stored DICOM file that no longer parses: it changed since Orthanc accepted it."""
        if sop is None:
            return unverifiable("?", f"The stored file cannot be parsed ({reason})")
        try:
            versions = self.records.versions(sop)
        except IndexUnavailable as exc:
            return unverifiable(sop, f"The gateway's records cannot be read ({exc})")
        recorded = versions[-1] if versions else None
        return Verdict(
            status="tampered",
            sop_instance_uid=sop,
            digest_now=None,
            recorded=recorded,
            headline="Refused: this image was altered after it was stored.",
            explanation=(
                "The file stored in the PACS is no longer a readable DICOM file. Do not use "
                "it; the PACS administrator has been alerted and can restore the original."
            ),
            ledger="not consulted",
            checked_at=time.time(),
        )

    def _check_header_copy(self, uuid: str, data: bytes) -> None:
        attachment = self.catalog.get(uuid)
        if attachment is None or attachment.sop_instance_uid is None:
            return  # made before the plugin ran: nothing to compare with
        sop = attachment.sop_instance_uid
        last = self._statuses.get(sop) or (self.catalog.last_verdict(sop) or ("", None))[0]
        if attachment.sha256 is not None and hashlib.sha256(data).digest() != attachment.sha256:
            verdict = Verdict(
                status="tampered",
                sop_instance_uid=sop,
                digest_now=None,
                recorded=None,
                headline="Refused: this image was altered after it was stored.",
                explanation=(
                    "Orthanc's stored copy of this image's header differs from the one it "
                    "made when the image arrived. Do not use it; the PACS administrator has "
                    "been alerted."
                ),
                ledger="not consulted",
                checked_at=time.time(),
            )
            self._after(verdict, attachment.orthanc_id, on="read")
            raise Refused(verdict)
        if last in ("tampered", "missing"):
            raise Refused(
                Verdict(
                    status="tampered",
                    sop_instance_uid=sop,
                    digest_now=None,
                    recorded=None,
                    headline="Refused: this image was altered after it was recorded.",
                    explanation="Its stored file was refused; its header is withheld too.",
                    ledger="not consulted",
                    checked_at=time.time(),
                )
            )

    # -- inspection for the REST routes ---------------------------------------------------

    def inspect(self, uuid: str, *, orthanc_id: str | None = None) -> Verdict:
        """Judge attachment ``uuid`` straight from disk (for explanations; records alerts)."""
        try:
            data = self.area.read(uuid)
        except FileNotFoundError:
            attachment = self.catalog.get(uuid)
            sop = attachment.sop_instance_uid if attachment and attachment.sop_instance_uid else "?"
            verdict = missing(sop)
            self._after(verdict, orthanc_id, on="read")
            return verdict
        return self.check(uuid, data, orthanc_id=orthanc_id)

    # -- alerts ----------------------------------------------------------------------------

    def _after(self, verdict: Verdict, orthanc_id: str | None, *, on: str) -> None:
        sop = verdict.sop_instance_uid
        if self._statuses.get(sop) != verdict.status:
            self._statuses[sop] = verdict.status
            try:
                self.catalog.set_verdict(sop, verdict.status, verdict.digest_now)
            except Exception as exc:
                self.log(f"xray-gateway: could not keep the verdict of {sop}: {exc}")
        if verdict.status == "intact" or verdict.status == "pending" or not verdict.alert:
            return
        digest = verdict.digest_now or b""
        if verdict.status in ("unregistered", "retired"):
            if not self.catalog.first_notice(verdict.status, sop, digest):
                return
        elif not self._due(verdict.status, sop, digest):
            return
        kind = "error" if verdict.status == "unverifiable" else verdict.status
        recorded = verdict.recorded
        detail = (
            f"{'refused' if not verdict.served else 'served with a warning'} on {on}: "
            f"{verdict.headline} dataset digest now "
            f"{verdict.digest_now.hex() if verdict.digest_now else 'unknown'}"
        )
        if recorded is not None:
            detail += (
                f"; recorded version {recorded.version} digest {recorded.digest.hex()}"
                f" (tx {recorded.tx_hash}, block {recorded.block_number}, batch {recorded.batch_id})"
            )
        if verdict.changed:
            detail += f"; {verdict.changed} changed"
        detail += f"; ledger: {verdict.ledger}"
        self.log(f"xray-gateway: {verdict.status} SOP Instance {sop} ({detail})")
        try:
            self.alerts.record(
                kind=kind, source=SOURCE, detail=detail, sop_instance_uid=sop,
                orthanc_id=orthanc_id,
            )  # fmt: skip
        except Exception as exc:  # an alert store problem must not change what is served
            self.log(f"xray-gateway: could not record the alert for {sop}: {exc}")

    def _due(self, kind: str, sop: str, digest: bytes) -> bool:
        now = time.monotonic()
        key = (kind, sop, digest)
        with self._lock:
            last = self._alerted.get(key)
            if last is not None and now - last < self.repeat_after:
                return False
            self._alerted[key] = now
            return True
