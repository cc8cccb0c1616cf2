"""The storage area's logic: write what Orthanc creates, check what it reads, explain refusals.

Orthanc calls ``create``/``read``/``remove`` for every attachment. What each content type gets:

- 1, the DICOM file: checked on every read (below).
- 3, "DICOM until pixel data" (Orthanc's header-only copy, kept for a storage area that
  cannot read ranges): checked against the SHA-256 recorded when Orthanc made it from the
  full file; refused as well once its instance was found tampered.
- 2, Orthanc's DICOM-as-JSON (written only by Orthanc before 1.9.1): passes through.
- user-defined types (>= 1024, which Orthanc 1.10 hands to a storage plugin as 0,
  "unknown"), among them 4301, the DICOMweb plugin's series metadata cache (DICOMweb >=
  1.15): always refused, as nothing ties their bytes to a checked file. The metadata cache
  is turned off (``DicomWeb.EnableMetadataCache: false``, which the plugin's settings
  require), and the REST routes that read or write such attachments answer 403 (see
  ``host.py``: Orthanc would serve one it has just written from memory, past this area).

- ``create`` writes the file first (Orthanc must never lose what it was given), then
  learns which instance it is: SOP Instance UID, Orthanc's id and the arrival digest,
  kept in the :class:`~gateway.orthanc_plugin.catalog.Catalog`. The arrival digest is the
  dataset digest, or, when even the File Meta cannot be read, the SHA-256 of the whole
  file (kept in the ``sha256`` column, ``digest`` empty). Identifiers come from pydicom,
  leniently when the strict parse fails (files made by Orthanc's ``/tools/create-dicom``
  have no SOP Class UID). An instance arriving without a record is alerted as
  ``unregistered`` right away.
- ``read`` hashes the dataset bytes it has just read (the digest of
  :mod:`gateway.core.fingerprint`; where the File Meta ends is parsed again only when
  its bytes changed, :mod:`~gateway.orthanc_plugin.meta_memo`), makes sure the file is
  the instance Orthanc filed under that attachment (its SOP Instance UID and Orthanc id against the catalogue's, or against
  Orthanc's own record of the attachment), judges the bytes against the gateway's records
  (:mod:`~gateway.orthanc_plugin.verdict`) and raises :class:`~gateway.errors.ReadRefused` for content that
  must not leave the PACS. Orthanc then fails the request (500 on ``/file``, 415 on
  ``/preview``, a failed sub-operation on C-GET/C-MOVE).
- Fail-closed (``XrayGateway.FailClosed``): a verdict whose evidence could not be read
  (``unverifiable``, ``unconfirmed``) is refused and alerted instead of served.
- Alerts are keyed by the instance: its SOP Instance UID and Orthanc id when known, else
  the attachment's UUID; never one shared key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, cast

import pydicom

from gateway.core.fingerprint import MAX_INSTANCE_BYTES, fingerprint_bytes, read_header
from gateway.errors import DatasetUnreadable, IndexUnavailable, ReadRefused
from gateway.orthanc_plugin.catalog import Attachment, Catalog
from gateway.orthanc_plugin.evidence import Records
from gateway.orthanc_plugin.evidence_cache import EvidenceCache
from gateway.orthanc_plugin.meta_memo import MetaMemo
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import (
    PENDING_ALERT_S,
    SERVED,
    LedgerFacts,
    ReadVerdict,
    Status,
    Version,
    judge,
    missing,
    unverifiable,
)
from gateway.trust.verdicts import TABLE

DICOM = 1  # OrthancPluginContentType_Dicom
DICOM_UNTIL_PIXEL_DATA = 3  # OrthancPluginContentType_DicomUntilPixelData
DICOM_AS_JSON = 2  # OrthancPluginContentType_DicomAsJson (Orthanc < 1.9.1 wrote it)
# The DICOMweb plugin's series metadata cache (>= 1.15): a user-defined type, which
# Orthanc 1.10 passes to the storage area as 0 (OrthancPluginContentType_Unknown).
DICOMWEB_METADATA_CACHE = 4301
UNCHECKABLE = "user-defined (such as DICOMweb's metadata cache, 4301)"
DEFLATED = "1.2.840.10008.1.2.1.99"
SOURCE = "orthanc-plugin"
# Statuses whose evidence could not be read: refused under fail-closed.
FAIL_CLOSED_REFUSES = frozenset({"unverifiable", "unconfirmed"})
IDENTITY_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def serves(status: str, *, fail_closed: bool) -> bool:
    """Whether the plugin hands out the bytes of an instance with ``status``.

    The status table's answer (:data:`~gateway.orthanc_plugin.verdict.SERVED`; a status it
    does not list is refused), except that under fail-closed a verdict whose evidence could
    not be read (:data:`FAIL_CLOSED_REFUSES`) is refused too.
    """
    if fail_closed and status in FAIL_CLOSED_REFUSES:
        return False
    return SERVED.get(cast(Status, status), False)


class AlertSink(Protocol):
    """Where alerts go: :class:`gateway.trust.alerts.Alerts` in production."""

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

    def facts(self, version: Version, others: Sequence[Version] = ()) -> LedgerFacts: ...


# Orthanc's id of an instance -> the UUID of its DICOM attachment (None: no such instance)
Locate = Callable[[str], "str | None"]
# Told of every checked read of a DICOM file: its attachment UUID, the verdict, whether served
OnRead = Callable[[str, ReadVerdict, bool], None]
# The versions of a SOP Instance UID being looked up ahead of the check, on a helper thread
Lookup = tuple[str, "Future[tuple[Version, ...]]"]
#: Helper threads of ``look_ahead``: as many as the PostgreSQL record book's connections.
LOOK_AHEAD_THREADS = 4


def orthanc_instance_id(
    patient_id: str, study_uid: str, series_uid: str, sop_instance_uid: str
) -> str:
    """Orthanc's id of an instance: SHA-1 of the four identifiers, in five dashed groups."""
    sha = hashlib.sha1(
        f"{patient_id}|{study_uid}|{series_uid}|{sop_instance_uid}".encode(),
        usedforsecurity=False,
    ).hexdigest()
    return "-".join(sha[i : i + 8] for i in range(0, 40, 8))


def lenient_identity(data: bytes, syntax: str | None) -> tuple[str, str] | None:
    """SOP Instance UID and Orthanc id from a file the strict parse refuses, or None.

    pydicom reads only the four identifying attributes, forcing past a missing preamble or
    SOP Class UID. A deflated dataset is not tried: pydicom would inflate it unbounded.
    """
    if syntax == DEFLATED:
        return None
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(IDENTITY_TAGS)
        )
        values = [str(ds.get(keyword, "") or "").strip() for keyword in IDENTITY_TAGS]
    except Exception:  # pydicom raises many types on malformed input
        return None
    if not all(values[1:]):
        return None
    return values[3], orthanc_instance_id(*values)


class Guard:
    """Checks every DICOM read against the gateway's records and the ledger mirror.

    Parameters
    ----------
    area:
        Orthanc's files on disk.
    catalog:
        The plugin's attachment catalogue.
    records:
        The gateway's index, read-only (the SQLite file, or PostgreSQL through its view).
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
    fail_closed:
        Refuse (and alert) instead of serving when the evidence cannot be read
        (``XrayGateway.FailClosed``).
    locate:
        Orthanc's own record of which attachment holds an instance (by Orthanc id), asked
        when the catalogue does not know an attachment; ``None`` when there is no Orthanc.
    pending_alert_s:
        A received copy not anchored after this many seconds is ``unconfirmed`` and alerted
        (``GATEWAY_PENDING_ALERT_S``).
    on_read:
        Told of every read of a DICOM file, served or refused (the access trail's journal);
        its failure never changes what is served.
    look_ahead:
        Start the evidence look-up of the catalogued instance on a helper thread before
        the file is read, so that its round trip to an index across the network
        (PostgreSQL) overlaps the file read and the SHA-256 (both release the GIL). The
        versions are still read on every read, at its time; only when the file turns out
        to be another instance is the look-up made again for that one. Off for SQLite,
        whose look-up (~10 us) costs less than the hand-off; skipped when ``records`` is
        an :class:`~gateway.orthanc_plugin.evidence_cache.EvidenceCache` holding the
        answer.
    """

    def __init__(
        self,
        *,
        area: FileArea,
        catalog: Catalog,
        records: Records,
        alerts: AlertSink,
        ledger: LedgerView | None = None,
        log: Callable[[str], None] = lambda message: None,
        repeat_after: float = 600.0,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        fail_closed: bool = False,
        locate: Locate | None = None,
        pending_alert_s: float = PENDING_ALERT_S,
        on_read: OnRead | None = None,
        look_ahead: bool = False,
    ) -> None:
        self.on_read = on_read
        self._helpers = (
            ThreadPoolExecutor(LOOK_AHEAD_THREADS, thread_name_prefix="xray-evidence")
            if look_ahead
            else None
        )
        self.max_instance_bytes = max_instance_bytes
        self.fail_closed = fail_closed
        self.locate = locate
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
        self.meta = MetaMemo()

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
        """Read the attachment; raise :class:`~gateway.errors.ReadRefused` if it must not be served."""
        if content_type not in (DICOM, DICOM_AS_JSON, DICOM_UNTIL_PIXEL_DATA):
            raise ReadRefused(self._uncheckable_refused(uuid))
        early = self._look_up_ahead(uuid) if content_type == DICOM else None
        data = self.area.read(uuid)
        if content_type == DICOM:
            verdict = self.check(uuid, data, early=early)
            served = self.serves(verdict)
            self.tell_read(uuid, verdict, served)
            if not served:
                raise ReadRefused(verdict)
        elif content_type == DICOM_UNTIL_PIXEL_DATA:
            self._check_header_copy(uuid, data)
        return data

    def _look_up_ahead(self, uuid: str) -> Lookup | None:
        """Start looking up the catalogued instance's versions (``look_ahead``), or None."""
        if self._helpers is None:
            return None
        attachment = self.catalog.get(uuid)
        if attachment is None or not attachment.sop_instance_uid:
            return None
        sop = attachment.sop_instance_uid
        if isinstance(self.records, EvidenceCache) and self.records.cached(sop):
            return None  # answered from memory in the check: no hand-off to a thread
        try:
            return sop, self._helpers.submit(self.records.versions, sop)
        except RuntimeError:  # shut down (Orthanc stopping): looked up in the check
            return None

    def close(self) -> None:
        """Stop the look-ahead's helper threads (Orthanc stopping)."""
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)

    def tell_read(self, uuid: str, verdict: ReadVerdict, served: bool) -> None:
        """Tell ``on_read`` of a read (a journal problem is logged, the read goes on)."""
        if self.on_read is None:
            return
        try:
            self.on_read(uuid, verdict, served)
        except Exception as exc:  # the trail must not change what is served
            self.log(f"xray-gateway: could not journal a read of attachment {uuid}: {exc}")

    def serves(self, verdict: ReadVerdict) -> bool:
        """Whether ``verdict``'s bytes leave the PACS (:func:`serves` with this guard's mode)."""
        return serves(verdict.status, fail_closed=self.fail_closed)

    def remove(self, uuid: str, content_type: int) -> None:
        self.area.remove(uuid)
        self.catalog.remove(uuid)
        self.meta.forget(uuid)

    # -- learning at create ----------------------------------------------------------------

    def _learn_dicom(self, uuid: str, data: bytes) -> None:
        """Catalogue the file's identity and arrival digest, even when pydicom cannot parse it.

        Without a dataset digest (no readable File Meta), the SHA-256 of the whole file is
        the arrival digest, kept in ``sha256`` with ``digest`` empty: any later change to
        the file is then refused as tampered rather than served as unverifiable.
        """
        try:
            digest: bytes | None
            digest, syntax = self.meta.dataset_digest(uuid, data)
        except DatasetUnreadable:
            digest, syntax = None, ""
        identity = self._file_identity(data, syntax)
        sop, orthanc_id = identity if identity is not None else (None, None)
        self.catalog.put(
            Attachment(
                uuid=uuid,
                content_type=DICOM,
                sop_instance_uid=sop,
                orthanc_id=orthanc_id,
                sha256=hashlib.sha256(data).digest() if digest is None else None,
                digest=digest,
                meta=self.meta.mark(uuid) if digest is not None else None,
            )
        )
        if digest is None:
            self.log(f"xray-gateway: attachment {uuid} has no readable File Meta; its raw "
                     "SHA-256 is its arrival digest")  # fmt: skip
            return
        if sop is None:
            self.log(f"xray-gateway: attachment {uuid} names no instance; it cannot be "
                     "looked up in the gateway's records")  # fmt: skip
            return
        verdict = self._judge(sop, digest, syntax, data, arrival_digest=digest)
        self._after(verdict, orthanc_id, uuid=uuid, on="arrival")

    def _file_identity(self, data: bytes, syntax: str | None) -> tuple[str, str] | None:
        """The SOP Instance UID and Orthanc id the file itself names (None: unreadable)."""
        try:
            header = read_header(io.BytesIO(data), limit=self.max_instance_bytes)
        except DatasetUnreadable as exc:
            found = lenient_identity(data, syntax)
            if found is None:
                self.log(f"xray-gateway: a stored file names no instance: {exc}")
            return found
        return header.sop_instance_uid, orthanc_instance_id(
            header.patient_id, header.study_instance_uid,
            header.series_instance_uid, header.sop_instance_uid,
        )  # fmt: skip

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

    def check(
        self,
        uuid: str,
        data: bytes,
        *,
        orthanc_id: str | None = None,
        early: Lookup | None = None,
    ) -> ReadVerdict:
        """Judge the DICOM file ``data`` stored as ``uuid`` (and record alerts).

        ``orthanc_id`` is the instance the caller asked for, when it knows (REST routes):
        the file must be that instance. ``early``: a look-up started before the file was
        read (``look_ahead``), used if the file is the instance it looks up.
        """
        verdict, orthanc_id = self._decide(uuid, data, orthanc_id, early)
        verdict = self._under_policy(verdict)
        self._after(verdict, orthanc_id, uuid=uuid, on="read")
        return verdict

    def _decide(
        self, uuid: str, data: bytes, orthanc_id: str | None, early: Lookup | None = None
    ) -> tuple[ReadVerdict, str | None]:
        attachment = self.catalog.get(uuid)
        known_id = orthanc_id or (attachment.orthanc_id if attachment is not None else None)
        if attachment is not None and attachment.digest is None and attachment.sha256:
            # arrival digest of a file without readable File Meta: the whole file's SHA-256
            raw = hashlib.sha256(data).digest()
            named_sop = attachment.sop_instance_uid or ""
            judged = self._judge(
                named_sop, raw, "", data, arrival_digest=attachment.sha256, early=early
            )
            return judged, known_id
        try:
            kept = attachment.meta if attachment is not None else None
            digest, syntax = self.meta.dataset_digest(uuid, data, kept=kept)
        except DatasetUnreadable as exc:
            catalogued = attachment.sop_instance_uid if attachment is not None else None
            return self._unreadable(catalogued, str(exc)), known_id
        identity = self._identity(uuid, data, syntax, attachment, digest, orthanc_id)
        if isinstance(identity, ReadVerdict):
            return identity, known_id
        sop, known_id = identity
        arrival = attachment.digest if attachment is not None else None
        return self._judge(sop, digest, syntax, data, arrival_digest=arrival, early=early), known_id

    def _identity(
        self,
        uuid: str,
        data: bytes,
        syntax: str,
        attachment: Attachment | None,
        digest: bytes,
        orthanc_id: str | None,
    ) -> tuple[str, str | None] | ReadVerdict:
        """Which instance the file is, or the verdict refusing it as another one.

        The catalogue's identity holds while the dataset is the one catalogued at arrival.
        Otherwise the file's own SOP Instance UID and Orthanc id must be the catalogue's
        and the caller's; with no catalogue row, Orthanc's record of which attachment holds
        that instance must name this one. File B, intact, is never served under A's id.
        """
        known_id = orthanc_id or (attachment.orthanc_id if attachment is not None else None)
        expected_sop = attachment.sop_instance_uid if attachment is not None else None
        unchanged = attachment is not None and attachment.digest == digest
        if expected_sop and unchanged and (orthanc_id is None or orthanc_id == known_id):
            return expected_sop, known_id
        found = self._file_identity(data, syntax)
        if found is None:
            if expected_sop:
                return expected_sop, known_id  # the digest decides
            return unverifiable("", "The stored file names no instance it could be checked as")
        sop, file_id = found
        if (expected_sop and sop != expected_sop) or (known_id and file_id != known_id):
            return self._wrong_instance(expected_sop, sop, digest)
        if known_id is None:
            holder = self._holder(file_id)
            if holder is None:
                return unverifiable(sop, "Orthanc's record of this file cannot be found")
            if holder != uuid:
                return self._wrong_instance(None, sop, digest)
        if attachment is None:
            self.catalog.put(Attachment(uuid, DICOM, sop, file_id, None, None))
        return sop, file_id

    def _holder(self, orthanc_id: str) -> str | None:
        """The UUID of instance ``orthanc_id``'s DICOM file: the catalogue's, else Orthanc's."""
        row = self.catalog.by_orthanc_id(orthanc_id, DICOM)
        if row is not None:
            return row.uuid
        if self.locate is None:
            return None
        try:
            return self.locate(orthanc_id) or ""  # "" : Orthanc holds no such instance
        except Exception as exc:  # Orthanc's answer is evidence too; without it, unverifiable
            self.log(f"xray-gateway: could not ask Orthanc about {orthanc_id}: {exc}")
            return None

    def _wrong_instance(
        self, expected_sop: str | None, file_sop: str, digest: bytes
    ) -> ReadVerdict:
        """Another instance's file in this one's place (possibly another patient's)."""
        filed = f"SOP Instance {expected_sop}" if expected_sop else "another instance"
        return ReadVerdict(
            status="tampered",
            sop_instance_uid=expected_sop or "",
            digest_now=digest,
            recorded=None,
            headline="Refused: this file is another image than the one filed here.",
            explanation=(
                f"The stored file holds SOP Instance {file_sop}, but the PACS filed it as "
                f"{filed}: an image (possibly of another patient) was put in its place. Do not "
                "use it; the PACS administrator has been alerted."
            ),
            ledger="not consulted",
            checked_at=time.time(),
        )

    def _under_policy(self, verdict: ReadVerdict) -> ReadVerdict:
        """Under fail-closed, say that a verdict without evidence is refused, not shown."""
        if self.serves(verdict) or verdict.status not in FAIL_CLOSED_REFUSES:
            return verdict
        return dataclasses.replace(
            verdict,
            headline="Refused: the integrity of this image could not be checked.",
            explanation=(
                f"{verdict.explanation.split('. It is shown')[0]}. This PACS runs fail-closed: "
                "an image whose integrity cannot be confirmed is withheld; the PACS "
                "administrator has been alerted."
            ),
        )

    def _uncheckable_refused(self, uuid: str) -> ReadVerdict:
        """A user-defined attachment: never served, nothing ties it to a checked file."""
        verdict = ReadVerdict(
            status="tampered",
            sop_instance_uid="",
            digest_now=None,
            recorded=None,
            headline="Refused: an attachment the integrity plugin cannot check.",
            explanation=(
                f"Attachment {uuid} is {UNCHECKABLE}: nothing ties its bytes to a checked "
                "file, and the DICOMweb metadata cache is off, so it is not served; the "
                "PACS administrator has been alerted."
            ),
            ledger="not consulted",
            checked_at=time.time(),
        )
        self._after(verdict, None, uuid=uuid, on="read")
        return verdict

    def _judge(
        self,
        sop: str,
        digest: bytes,
        syntax: str,
        data: bytes,
        *,
        arrival_digest: bytes | None,
        early: Lookup | None = None,
    ) -> ReadVerdict:
        try:
            versions = self._versions(sop, early)
        except IndexUnavailable as exc:
            return unverifiable(sop, f"The gateway's records cannot be read ({exc})")
        # Without a mirror there are no facts at all (the index's evidence only); with
        # one, a version it has no facts for is unconfirmed.
        facts: dict[bytes, LedgerFacts] | None = None
        if self.ledger is not None:
            facts = {}
            for version in versions:
                if version.anchored:
                    facts[version.digest] = self.ledger.facts(version, versions)
            self._foreign_claims(sop, facts)
        changed = None
        if versions and not any(v.digest == digest for v in versions):
            changed = self._what_changed(data, versions[-1])
        return judge(
            sop_instance_uid=sop, digest_now=digest, versions=versions, ledger=facts,
            changed=changed, arrival_digest=arrival_digest, syntax_now=syntax,
            pending_alert_s=self.pending_alert_s,
        )  # fmt: skip

    def _versions(self, sop: str, early: Lookup | None) -> tuple[Version, ...]:
        """The recorded versions of ``sop``: the look-up started ahead if it is of ``sop``."""
        if not sop:
            return ()
        if early is not None and early[0] == sop:
            return early[1].result()
        return self.records.versions(sop)

    def _what_changed(self, data: bytes, recorded: Version) -> str | None:
        """``"pixels"`` or ``"header"``, comparing pixel digests (only for refused copies)."""
        if recorded.pixel_digest is None:
            return None
        try:
            pixel_digest = fingerprint_bytes(data, limit=self.max_instance_bytes).pixel_digest
        except DatasetUnreadable:
            return None
        return "header" if pixel_digest == recorded.pixel_digest else "pixels"

    def _unreadable(self, sop: str | None, reason: str) -> ReadVerdict:
        """A stored DICOM file that no longer parses: it changed since Orthanc accepted it."""
        if sop is None:
            return unverifiable("", f"The stored file cannot be parsed ({reason})")
        try:
            versions = self.records.versions(sop)
        except IndexUnavailable as exc:
            return unverifiable(sop, f"The gateway's records cannot be read ({exc})")
        recorded = versions[-1] if versions else None
        return ReadVerdict(
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
            verdict = ReadVerdict(
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
            self._after(verdict, attachment.orthanc_id, uuid=uuid, on="read")
            raise ReadRefused(verdict)
        if last in ("tampered", "missing"):
            raise ReadRefused(
                ReadVerdict(
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

    def inspect(self, uuid: str, *, orthanc_id: str | None = None) -> ReadVerdict:
        """Judge attachment ``uuid`` straight from disk (for explanations; records alerts)."""
        try:
            data = self.area.read(uuid)
        except FileNotFoundError:
            attachment = self.catalog.get(uuid)
            sop = attachment.sop_instance_uid if attachment and attachment.sop_instance_uid else ""
            verdict = missing(sop)
            self._after(verdict, orthanc_id, uuid=uuid, on="read")
            return verdict
        return self.check(uuid, data, orthanc_id=orthanc_id)

    # -- alerts ----------------------------------------------------------------------------

    def _after(self, verdict: ReadVerdict, orthanc_id: str | None, *, uuid: str, on: str) -> None:
        """Keep the verdict and raise its alert, keyed by the instance (SOP Instance UID,
        else Orthanc id, else attachment UUID), at most once per incident."""
        sop = verdict.sop_instance_uid
        key = sop or orthanc_id or f"attachment {uuid}"
        if self._last_status(key) != verdict.status:
            self._statuses[key] = verdict.status
            try:
                self.catalog.set_verdict(key, verdict.status, verdict.digest_now)
            except Exception as exc:
                self.log(f"xray-gateway: could not keep the verdict of {key}: {exc}")
        if verdict.status == "intact" or verdict.status == "pending" or not verdict.alert:
            return
        digest = verdict.digest_now or b""
        if verdict.status in ("unregistered", "retired"):
            if not self.catalog.first_notice(verdict.status, key, digest):
                return
        elif not self._due(verdict.status, key, digest):
            return
        kind = TABLE[verdict.status].alert or "error"  # the status table names its alert
        recorded = verdict.recorded
        detail = (
            f"{'refused' if not self.serves(verdict) else 'served with a warning'} on {on}: "
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
        if not sop:  # the alert's columns cannot name it: the detail does
            detail = f"{_named(sop, orthanc_id, uuid)}: {detail}"
        self.log(f"xray-gateway: {verdict.status} {_named(sop, orthanc_id, uuid)} ({detail})")
        try:
            self.alerts.record(
                kind=kind, source=SOURCE, detail=detail, sop_instance_uid=sop or None,
                orthanc_id=orthanc_id,
            )  # fmt: skip
        except Exception as exc:  # an alert store problem must not change what is served
            self.log(f"xray-gateway: could not record the alert for {key}: {exc}")

    def _last_status(self, key: str) -> str | None:
        """The verdict last kept for ``key``: this process's, else the catalogue's.

        The first read of an instance after Orthanc starts reads the kept verdict (an
        indexed SELECT) rather than writing the same one again (a write transaction,
        four times the cost, on every first view of every image).
        """
        status = self._statuses.get(key)
        if status is None:
            try:
                kept = self.catalog.last_verdict(key)
            except Exception as exc:  # then written again below, as before
                self.log(f"xray-gateway: could not read the kept verdict of {key}: {exc}")
                return None
            if kept is not None:
                status = self._statuses[key] = kept[0]
        return status

    def _foreign_claims(self, sop: str, facts: dict[bytes, LedgerFacts]) -> None:
        """Alert once per account that wrote under the record key without owning it."""
        accounts = sorted({account for fact in facts.values() for account in fact.foreign})
        for account in accounts:
            if not self.catalog.first_notice("foreign_claim", sop, account.lower().encode()):
                continue
            detail = (
                f"{account} wrote a version or a retirement of this record on the ledger, "
                "but it does not own the record (another recorder anchored it first): the "
                "write is ignored by every verdict"
            )
            self.log(f"xray-gateway: foreign_claim SOP Instance {sop} ({detail})")
            try:
                self.alerts.record(
                    kind="foreign_claim", source=SOURCE, detail=detail, sop_instance_uid=sop
                )
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


def _named(sop: str, orthanc_id: str | None, uuid: str) -> str:
    """How a log line names an instance (UIDs and ids only, never patient data)."""
    if sop:
        return f"SOP Instance {sop}"
    if orthanc_id:
        return f"instance {orthanc_id}"
    return f"attachment {uuid}"
