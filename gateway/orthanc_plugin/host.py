"""The glue to Orthanc's ``orthanc`` module: storage area, REST routes, Explorer banner.

Everything Orthanc-specific is here and in ``entry.py``; the logic is in typed modules
that run without Orthanc (``guard``, ``verdict``, ``catalog``, ``records``,
``ledger_mirror``). ``orthanc`` is passed in (it only exists inside Orthanc).

Routes (all behind Orthanc's HTTP authentication, GET only):

``/xray/instances/{id}/integrity``, ``/xray/series/{id}/integrity``, ``/xray/studies/{id}/integrity``
    The verdict as JSON, with a radiologist's explanation (Explorer's banner reads these).
``/xray/instances/{id}/stored-file``
    The DICOM file exactly as stored, *without* the refusal, for the gateway's verify and
    audit code to hash and diff a tampered copy. Only for the gateway: the request must
    carry the secret ``XrayGateway.StoredFileToken`` in ``X-Xray-Stored-File-Token``;
    anyone else (any other Orthanc user) gets 403, and so does everyone when no token is
    configured. Headers ``X-Xray-Status`` (the verdict) and ``X-Xray-Dataset-Digest`` (hex
    SHA-256 of the dataset bytes, File Meta excluded).
``/web-viewer/series/{id}`` (when the Orthanc Web Viewer plugin is loaded)
    Replaces the viewer's series answer (the Python plugin is loaded first, so its route
    wins): each refused slice becomes ``xray-refused-<id>_<frame>``, which the viewer then
    asks from ``/web-viewer/instances/<compression>-xray-refused-…``, answered with a
    "REFUSED" picture (:mod:`~gateway.orthanc_plugin.viewer_image`); the overlay line that
    shows the series description carries the integrity headline.
``/{level}/{id}/attachments/{name}…`` other than ``dicom`` and ``dicom-until-pixel-data``
    403, by an incoming-request filter: user-defined attachments (DICOMweb's metadata
    cache 4301 among them) cannot be checked, and Orthanc serves one it has just written
    from memory without asking the storage area.
``/web-viewer/instances/<compression>-{id}_<frame>`` (with the Web Viewer)
    Replaces the viewer's image answer, which the viewer serves from its own cache of
    decoded images (files on disk, never checked): the instance is checked, then its frame
    is decoded by Orthanc through the checking storage area; a refused one gets 403.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from gateway.core.fingerprint import dataset_digest
from gateway.errors import OrthancResourceNotFound
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import PostgresRecordBook, RecordBook, Records
from gateway.orthanc_plugin.evidence_cache import EvidenceCache, EvidenceListener
from gateway.orthanc_plugin.guard import DICOM, Guard
from gateway.orthanc_plugin.ledger_mirror import LedgerMirror
from gateway.orthanc_plugin.readers import Readers
from gateway.orthanc_plugin.settings import PluginSettings
from gateway.orthanc_plugin.storage import FileArea
from gateway.orthanc_plugin.verdict import SEVERITY, ReadVerdict, Status, worst
from gateway.orthanc_plugin.viewer_image import refusal_image, slice_image
from gateway.redact import redact_url
from gateway.trust.access_journal import AccessJournal
from gateway.trust.alerts import Alerts

ORTHANC_ID = r"([0-9a-f]{8}(?:-[0-9a-f]{8}){4})"
EXPLORER_JS = Path(__file__).with_name("explorer.js")
LEVELS = {"instances": "instance", "series": "series", "studies": "study"}
REFUSED_SLICE = "xray-refused-"
# REST access to an attachment the storage area does not check (see guard.py)
UNCHECKED_ATTACHMENT = re.compile(
    r"/(?:patients|studies|series|instances)/[^/]+/attachments/"
    r"(?!(?:dicom|dicom-until-pixel-data|1|3)(?:/|$))[^/]+"
)
STORED_FILE_HEADER = "x-xray-stored-file-token"  # Orthanc passes header names lowercased
DISPLAY_ATTRIBUTES = (
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "PixelSpacing",
)  # fmt: skip


class XrayPlugin:
    """The plugin as installed in one Orthanc: the guard plus the REST handlers."""

    def __init__(self, orthanc: Any, settings: PluginSettings) -> None:
        self.orthanc = orthanc
        self.settings = settings
        self.mirror: LedgerMirror | None = None
        if settings.chain_url and settings.contract_address:
            url, address = settings.chain_url, settings.contract_address

            def connect() -> Any:
                from gateway.ledger.client import XrayLedger  # web3: imported in the thread

                return XrayLedger.at(url, address)

            self.mirror = LedgerMirror(
                connect=connect,
                from_block=settings.from_block,
                log_range=settings.log_range,
                interval=settings.mirror_interval,
                log=orthanc.LogWarning,
                trusted_recorders=settings.trusted_recorders,
            )
        self.catalog = Catalog(settings.catalog_path)
        self.records: Records
        self.listener: EvidenceListener | None = None
        if settings.index_url:
            book = PostgresRecordBook(settings.index_url)
            self.evidence_source = book.where
            cache = EvidenceCache(book)  # kept while the index's notifications are heard
            self.listener = EvidenceListener(settings.index_url, cache, log=orthanc.LogWarning)
            self.records = cache
        else:
            self.records = RecordBook(settings.index_path)
            self.evidence_source = str(settings.index_path)
        self.readers = Readers()
        self.journal = AccessJournal(settings.access_journal_path)
        self.guard = Guard(
            area=FileArea(settings.storage_dir, sync=settings.sync_storage),
            catalog=self.catalog,
            records=self.records,
            alerts=Alerts(settings.alerts_path),
            ledger=self.mirror,
            log=orthanc.LogWarning,
            max_instance_bytes=settings.max_instance_bytes,
            fail_closed=settings.fail_closed,
            locate=self.orthanc_attachment,
            pending_alert_s=settings.pending_alert_s,
            on_read=self.journal_read,
            look_ahead=isinstance(self.records, EvidenceCache),  # a round trip per miss
        )

    # -- registration ----------------------------------------------------------------------

    def register(self) -> None:
        o = self.orthanc
        o.RegisterStorageArea(self.guard.create, self.guard.read, self.guard.remove)
        o.RegisterIncomingHttpRequestFilter(self.http_filter)
        for level in LEVELS:
            o.RegisterRestCallback(
                f"/xray/{level}/{ORTHANC_ID}/integrity", self._integrity_route(level)
            )
        o.RegisterRestCallback(f"/xray/instances/{ORTHANC_ID}/stored-file", self.stored_file)
        if self.settings.web_viewer:
            o.RegisterRestCallback(f"/web-viewer/series/{ORTHANC_ID}", self.web_viewer_series)
            o.RegisterRestCallback(
                f"/web-viewer/instances/[a-z0-9]+-{REFUSED_SLICE}{ORTHANC_ID}_[0-9]+",
                self.web_viewer_refused_slice,
            )
            o.RegisterRestCallback(
                f"/web-viewer/instances/[a-z0-9]+-{ORTHANC_ID}_([0-9]+)", self.web_viewer_image
            )
        o.ExtendOrthancExplorer(EXPLORER_JS.read_text())
        o.RegisterOnChangeCallback(self.on_change)
        if self.mirror is not None:
            self.mirror.start()
        if self.listener is not None:
            o.RegisterRestCallback("/xray/evidence-cache", self.evidence_cache_counts)
            self.listener.start()
        o.LogWarning(
            "xray-gateway plugin: storage area checks every DICOM read against "
            f"{self.evidence_source}"
            + (
                f" and the ledger at {redact_url(self.settings.chain_url or '')}"
                if self.mirror
                else ""
            )
        )

    def http_filter(self, uri: str, **request: Any) -> bool:
        """Orthanc's incoming-request filter: False (403) for unchecked attachments.

        It also notes who makes the request, for the access journal (``readers.py``).
        """
        self.readers.begin(uri, request)
        return "/attachments/" not in uri or UNCHECKED_ATTACHMENT.match(uri) is None

    def journal_read(self, uuid: str, verdict: ReadVerdict, served: bool) -> None:
        """Append a read of a DICOM file to the access journal (once per request and instance)."""
        sop = verdict.sop_instance_uid or None
        reader = self.readers.first_read(sop or uuid)
        if reader is None:
            return
        who, who_kind, route = reader
        attachment = self.catalog.get(uuid)
        self.journal.append(
            who=who, who_kind=who_kind, route=route, verdict=verdict.status, served=served,
            sop_instance_uid=sop, orthanc_id=attachment.orthanc_id if attachment else None,
        )  # fmt: skip

    def on_change(self, change_type: int, level: int, resource: str) -> None:
        if change_type != self.orthanc.ChangeType.ORTHANC_STOPPED:
            return
        if self.mirror is not None:
            self.mirror.stop()
        self.guard.close()
        self.journal.close()
        if self.listener is not None:
            self.listener.close()
        records = self.records.book if isinstance(self.records, EvidenceCache) else self.records
        if isinstance(records, (PostgresRecordBook, RecordBook)):
            records.close()

    # -- lookups ---------------------------------------------------------------------------

    def _get_json(self, uri: str) -> Any:
        try:
            return json.loads(self.orthanc.RestApiGet(uri))
        except self.orthanc.OrthancException as exc:
            raise OrthancResourceNotFound(uri) from exc

    def orthanc_attachment(self, orthanc_id: str) -> str | None:
        """Orthanc's own record of the UUID of an instance's DICOM file (None: no instance)."""
        try:
            info = self._get_json(f"/instances/{orthanc_id}/attachments/dicom/info")
        except OrthancResourceNotFound:
            return None
        return str(info["Uuid"])

    def attachment_uuid(self, orthanc_id: str) -> str:
        attachment = self.catalog.by_orthanc_id(orthanc_id, DICOM)
        if attachment is not None:
            return attachment.uuid
        info = self._get_json(f"/instances/{orthanc_id}/attachments/dicom/info")
        return str(info["Uuid"])

    def instance_verdict(self, orthanc_id: str) -> ReadVerdict:
        return self.guard.inspect(self.attachment_uuid(orthanc_id), orthanc_id=orthanc_id)

    def summary(self, level: str, orthanc_id: str) -> dict[str, Any]:
        """The integrity answer for one instance, series or study."""
        if level == "instances":
            self._get_json(f"/instances/{orthanc_id}")  # 404 for an id Orthanc does not know
            verdict = self.instance_verdict(orthanc_id)
            answer = verdict.as_json()
            answer["served"] = self.guard.serves(verdict)
            answer["id"] = orthanc_id
            return answer
        instances = self._get_json(f"/{level}/{orthanc_id}/instances")
        items: list[dict[str, Any]] = []
        for instance in instances:
            verdict = self.instance_verdict(str(instance["ID"]))
            items.append(
                {
                    "id": instance["ID"],
                    "instance_number": instance.get("MainDicomTags", {}).get("InstanceNumber"),
                    "status": verdict.status,
                    "served": self.guard.serves(verdict),
                    "headline": verdict.headline,
                }
            )
        statuses: list[Status] = [item["status"] for item in items]
        status = worst(statuses)
        counts = Counter(statuses)
        unchecked = sum(1 for item in items if not item["served"]) - (
            counts["tampered"] + counts["missing"]
        )  # refused under fail-closed
        headline, explanation = _summary_text(
            LEVELS[level], status, counts, len(items), unchecked_refused=unchecked
        )
        return {
            "id": orthanc_id,
            "level": LEVELS[level],
            "status": status,
            "served": all(item["served"] for item in items),
            "headline": headline,
            "explanation": explanation,
            "counts": {key: counts[key] for key in SEVERITY if counts[key]},
            "instances": items,
        }

    # -- REST handlers ---------------------------------------------------------------------

    def _integrity_route(self, level: str) -> Any:
        def handler(output: Any, uri: str, **request: Any) -> None:
            if request.get("method") != "GET":
                output.SendMethodNotAllowed("GET")
                return
            try:
                answer = self.summary(level, request["groups"][0])
            except OrthancResourceNotFound:
                _send_status(output, 404, f"no such {LEVELS[level]} in Orthanc")
                return
            output.AnswerBuffer(json.dumps(answer, indent=2), "application/json")

        return handler

    def stored_file(self, output: Any, uri: str, **request: Any) -> None:
        """The stored bytes without the refusal (for the gateway's verify and audit code)."""
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        if not self._holds_stored_file_token(request):
            _send_status(output, 403, "the stored file is for the xray gateway only")
            return
        orthanc_id = request["groups"][0]
        try:
            uuid = self.attachment_uuid(orthanc_id)
        except OrthancResourceNotFound:
            _send_status(output, 404, "no such instance in Orthanc")
            return
        try:
            data = self.guard.area.read(uuid)
        except FileNotFoundError:
            _send_status(output, 404, "the instance's file is missing from Orthanc's storage")
            return
        verdict = self.guard.check(uuid, data, orthanc_id=orthanc_id)
        output.SetHttpHeader("X-Xray-Status", verdict.status)
        # not a readable DICOM file any more: no digest header, the status says so
        with contextlib.suppress(Exception):
            output.SetHttpHeader("X-Xray-Dataset-Digest", dataset_digest(data)[0].hex())
        output.AnswerBuffer(data, "application/dicom")

    def evidence_cache_counts(self, output: Any, uri: str, **request: Any) -> None:
        """``GET /xray/evidence-cache``: what the evidence cache did (counts only, no UID)."""
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        assert isinstance(self.records, EvidenceCache)  # registered only with one
        counts = dataclasses.asdict(self.records.counts())
        output.AnswerBuffer(json.dumps(counts), "application/json")

    def _holds_stored_file_token(self, request: dict[str, Any]) -> bool:
        """True when the request carries the configured stored-file secret."""
        expected = self.settings.stored_file_token
        given = (request.get("headers") or {}).get(STORED_FILE_HEADER, "")
        return bool(expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())

    def web_viewer_image(self, output: Any, uri: str, **request: Any) -> None:
        """The Web Viewer's image of one frame, from a checked read (never the viewer's cache)."""
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        orthanc_id, frame = request["groups"]
        try:
            uuid = self.attachment_uuid(orthanc_id)
            data = self.guard.area.read(uuid)
        except (OrthancResourceNotFound, FileNotFoundError):
            _send_status(output, 404, "no such instance in Orthanc")
            return
        verdict = self.guard.check(uuid, data, orthanc_id=orthanc_id)
        # journaled here, refused or not; Orthanc's decode below is the same access
        self.guard.tell_read(uuid, verdict, self.guard.serves(verdict))
        if not self.guard.serves(verdict):
            # refused like every other read; the series answer names the slice
            # xray-refused-…, whose picture the viewer shows instead
            _send_status(output, 403, verdict.headline)
            return
        try:
            # decoded by Orthanc, reading through this plugin's checking storage area
            raw = self.orthanc.RestApiGet(f"/instances/{orthanc_id}/frames/{frame}/numpy?rescale=0")
        except self.orthanc.OrthancException:
            _send_status(output, 415, "Orthanc cannot decode this frame")
            return
        image = slice_image(np.load(io.BytesIO(raw)), _display_attributes(data))
        output.AnswerBuffer(json.dumps(image), "application/json")

    def web_viewer_series(self, output: Any, uri: str, **request: Any) -> None:
        """The Web Viewer's series answer, without refused instances and with the warning."""
        series_id = request["groups"][0]
        try:
            series = self._get_json(f"/series/{series_id}")
            summary = self.summary("series", series_id)
            study = self._get_json(f"/studies/{series['ParentStudy']}")
        except OrthancResourceNotFound:
            _send_status(output, 404, "no such series in Orthanc")
            return
        refused = {item["id"] for item in summary["instances"] if not item["served"]}

        def name(instance_id: str) -> str:
            return REFUSED_SLICE + instance_id if instance_id in refused else instance_id

        slices: list[str] = []
        try:
            ordered = self._get_json(f"/series/{series_id}/ordered-slices")
            for instance_id, first, count in ordered.get("SlicesShort", []):
                slices.extend(
                    f"{name(instance_id)}_{frame}" for frame in range(first, first + count)
                )
        except OrthancResourceNotFound:
            slices = [f"{name(item['id'])}_0" for item in summary["instances"]]
        description = series.get("MainDicomTags", {}).get("SeriesDescription", "")
        if summary["status"] != "intact":
            description = f"xray-gateway: {summary['headline']}" + (
                f" ({description})" if description else ""
            )
        patient = study.get("PatientMainDicomTags", {})
        answer = {
            "ID": series_id,
            "Slices": slices,
            "PatientID": patient.get("PatientID", ""),
            "PatientName": patient.get("PatientName", ""),
            "StudyDescription": study.get("MainDicomTags", {}).get("StudyDescription", ""),
            "SeriesDescription": description,
        }
        output.AnswerBuffer(json.dumps(answer), "application/json")

    def web_viewer_refused_slice(self, output: Any, uri: str, **request: Any) -> None:
        """The picture shown in the Web Viewer in place of a refused slice."""
        output.AnswerBuffer(json.dumps(refusal_image()), "application/json")


def _display_attributes(data: bytes) -> dict[str, Any]:
    """Rescale, window and spacing attributes of a checked file (empty if unreadable)."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True,
            specific_tags=list(DISPLAY_ATTRIBUTES),
        )  # fmt: skip
        return {keyword: ds.get(keyword) for keyword in DISPLAY_ATTRIBUTES}
    except Exception:  # pydicom raises many types on malformed input; defaults then
        return {}


def _send_status(output: Any, status: int, message: str) -> None:
    """An error status with a one-line body (Orthanc's SDK wants the body's length too)."""
    body = json.dumps({"HttpStatus": status, "Message": message})
    output.SendHttpStatus(status, body, len(body))


def _summary_text(
    level: str, status: Status, counts: Counter[Status], total: int, *, unchecked_refused: int = 0
) -> tuple[str, str]:
    refused = counts["tampered"] + counts["missing"] + counts["erased"]
    if unchecked_refused:
        return (
            f"Refused: {refused + unchecked_refused} of {total} images in this {level} were "
            "altered, are missing or could not be checked.",
            "This PACS runs fail-closed: those images are withheld from every viewer and "
            "download; the others are verified or flagged below. The PACS administrator has "
            "been alerted.",
        )
    if refused:
        return (
            f"Refused: {refused} of {total} images in this {level} were altered or are missing.",
            "Those images are withheld from every viewer and download; the others are "
            "verified or flagged below. The PACS administrator has been alerted and can "
            "restore the recorded originals.",
        )
    if status == "intact":
        return (
            f"Verified: all {total} images in this {level} are unaltered since they were recorded.",
            "Each image's stored copy matches the version the xray gateway recorded.",
        )
    flagged: dict[Status, str] = {
        "unregistered": "did not pass through the xray gateway (no record; cannot be verified)",
        "retired": "have a retired ledger record (withdrawn, not altered)",
        "pending": "are not anchored on the ledger yet",
        "unconfirmed": "have a ledger record that cannot be confirmed yet",
        "unverifiable": "could not be checked",
    }
    parts = [f"{counts[key]} {text}" for key, text in flagged.items() if counts[key]]
    return (
        f"Warning: in this {level}, " + "; ".join(parts) + ".",
        "These images are shown so that clinical access is not lost; the PACS administrator "
        "has been alerted.",
    )


def install(orthanc: Any) -> XrayPlugin:
    """Read the ``XrayGateway`` section, build the plugin and register it with Orthanc."""
    settings = PluginSettings.from_orthanc(json.loads(orthanc.GetConfiguration()))
    plugin = XrayPlugin(orthanc, settings)
    plugin.register()
    return plugin
