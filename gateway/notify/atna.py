"""Syslog messages for alerts: RFC 5424 around an IHE ATNA ``AuditMessage`` (pure).

The message (RFC 5424 §6)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [xray@32473 event="…" kind="…"] BOM<XML>

- PRI: facility 10 (security/authorization) and a severity by kind: 2 (critical) for a
  copy that was altered or forged (:data:`CRITICAL`), 4 (warning) for the others;
- MSGID ``IHE+RFC-3881``, as IHE ITI-20 (Record Audit Event) names an audit message;
- one structured-data element under the documentation enterprise number 32473
  (RFC 5612) holding the event id (the webhook id) and the alert kind;
- MSG: a UTF-8 BOM, then the DICOM PS3.15 Annex A.5 ``AuditMessage`` of a Security
  Alert (EventID DCM 110113): EventIdentification, the gateway as ActiveParticipant
  (DCM 110150 Application), AuditSourceIdentification, and the instance as
  ParticipantObjectIdentification by its SOP Instance UID. Never a patient's name, id or
  birth date: an alert holds none (:mod:`gateway.trust.alerts`).

Hand-written framing: the PyPI packages that write RFC 5424 have not been released
since 2019-2022; the header is six fields and one escaping rule. The XML is built with
:mod:`xml.etree.ElementTree`.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from gateway.notify.events import Event

FACILITY = 10  # security/authorization messages
CRITICAL_SEVERITY = 2
WARNING_SEVERITY = 4
#: Alerts about a copy altered or forged: critical, and a serious failure in ATNA terms.
CRITICAL = frozenset({"tampered", "store_corrupt", "spool_swapped", "foreign_claim"})
APP_NAME = "xray-gateway"
MSGID = "IHE+RFC-3881"
SD_ID = "xray@32473"
BOM = b"\xef\xbb\xbf"
#: The local code system of the EventTypeCode (an alert kind) and the object id type.
LOCAL_CODES = "99XRAY"


def severity(kind: str) -> int:
    """The syslog severity of an alert of ``kind``."""
    return CRITICAL_SEVERITY if kind in CRITICAL else WARNING_SEVERITY


def _header_field(value: str, *, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` long, or ``-``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _sd_value(value: str) -> str:
    """A structured-data parameter value with ``"``, ``\\`` and ``]`` escaped (§6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _timestamp(at: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def _code(parent: ET.Element, tag: str, *, code: str, system: str, text: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text}
    )


def audit_message(event: Event, *, host: str, node: str, pid: int) -> bytes:
    """The DICOM PS3.15 A.5 ``AuditMessage`` (Security Alert) for ``event``, UTF-8 XML."""
    data = event.data
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": "E",
            "EventDateTime": _timestamp(float(str(data["at"]))),
            # serious failure: a copy was altered; minor: it needs a look (PS3.15 A.5.3.11)
            "EventOutcomeIndicator": "8" if event.kind in CRITICAL else "4",
        },
    )
    _code(identification, "EventID", code="110113", system="DCM", text="Security Alert")
    _code(identification, "EventTypeCode", code=event.kind, system=LOCAL_CODES,
          text=f"xray-gateway alert: {event.kind}")  # fmt: skip
    participant = ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": f"{APP_NAME}@{node}",
            "AlternativeUserID": str(pid),
            "UserIsRequestor": "false",
            "NetworkAccessPointID": host,
            "NetworkAccessPointTypeCode": "1",  # a machine name
        },
    )
    _code(participant, "RoleIDCode", code="110150", system="DCM", text="Application")
    source = ET.SubElement(
        root, "AuditSourceIdentification", {"AuditEnterpriseSiteID": node, "AuditSourceID": node}
    )
    _code(source, "AuditSourceTypeCode", code="4", system="DCM",
          text="Application Server Process")  # fmt: skip
    uid = data.get("sop_instance_uid")
    if uid:
        instance = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(uid),
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report: a DICOM instance
            },
        )
        _code(instance, "ParticipantObjectIDTypeCode", code="sop-instance-uid",
              system=LOCAL_CODES, text="SOP Instance UID")  # fmt: skip
        for name in ("orthanc_id", "detail"):
            if data.get(name):
                value = base64.b64encode(str(data[name]).encode()).decode()
                ET.SubElement(instance, "ParticipantObjectDetail", {"type": name, "value": value})
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))


def syslog_message(event: Event, *, host: str, node: str, pid: int, now: float) -> bytes:
    """The RFC 5424 message for ``event`` (no transport framing: see :func:`octet_counted`)."""
    pri = FACILITY * 8 + severity(event.kind)
    header = " ".join(
        (
            f"<{pri}>1",
            _timestamp(now),
            _header_field(host, limit=255),
            APP_NAME,
            _header_field(str(pid), limit=128),
            MSGID,
        )
    )
    sd = f'[{SD_ID} event="{_sd_value(event.id)}" kind="{_sd_value(event.kind)}"]'
    body = audit_message(event, host=host, node=node, pid=pid)
    return f"{header} {sd} ".encode() + BOM + body


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 §4.3 / RFC 6587 §3.4.1 framing on a stream: ``MSG-LEN SP SYSLOG-MSG``."""
    return f"{len(message)} ".encode() + message
