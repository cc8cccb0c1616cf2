"""The syslog message: RFC 5424 header fields and an IHE ATNA AuditMessage without PHI."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

from gateway.notify import atna
from gateway.notify.events import event_of
from gateway.trust.alerts import Alert

UID = "1.2.826.0.1.3680043.10.1138.99.1"
HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>\[.*?[^\\]\]) (?P<msg>.*)$",
    re.DOTALL,
)


def alert(kind: str, *, uid: str | None = UID) -> Alert:
    return Alert(id=7, at=1_800_000_000.25, kind=kind, source="plugin",
                 sop_instance_uid=uid, orthanc_id="abc-def", detail='digest "x" ] differs')  # fmt: skip


def test_a_tampered_alert_is_a_critical_ATNA_security_alert() -> None:
    event = event_of(alert("tampered"), log="plugin", identity="0123456789ab")
    message = atna.syslog_message(
        event, host="gw.example", node="node-a", pid=42, now=1_800_000_001.0
    )
    found = HEADER.match(message)
    assert found is not None, message
    assert int(found["pri"]) == 10 * 8 + 2  # facility security/authorization, critical
    assert found["ts"] == b"2027-01-15T08:00:01.000000Z"
    assert (found["host"], found["app"], found["procid"], found["msgid"]) == (
        b"gw.example",
        b"xray-gateway",
        b"42",
        b"IHE+RFC-3881",
    )
    assert found["sd"] == b'[xray@32473 event="xray_plugin-0123456789ab_7" kind="tampered"]'
    assert found["msg"].startswith(atna.BOM)
    root = ET.fromstring(found["msg"][len(atna.BOM) :])
    assert root.tag == "AuditMessage"
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == "8"
    assert ident.get("EventActionCode") == "E"
    event_id = ident.find("EventID")
    assert event_id is not None
    assert (
        event_id.get("csd-code"),
        event_id.get("codeSystemName"),
        event_id.get("originalText"),
    ) == ("110113", "DCM", "Security Alert")
    role = root.find("ActiveParticipant/RoleIDCode")
    assert role is not None and role.get("csd-code") == "110150"
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "node-a"
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == UID
    details = {
        d.get("type"): base64.b64decode(str(d.get("value"))).decode()
        for d in obj.iter("ParticipantObjectDetail")
    }
    assert details == {"orthanc_id": "abc-def", "detail": 'digest "x" ] differs'}


def test_other_kinds_are_warnings_and_an_alert_without_an_instance_names_none() -> None:
    event = event_of(alert("pending_too_long", uid=None), log="gateway", identity="a")
    message = atna.syslog_message(event, host="h", node="n", pid=1, now=0.0)
    found = HEADER.match(message)
    assert found is not None and int(found["pri"]) == 84
    root = ET.fromstring(found["msg"][len(atna.BOM) :])
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert root.find("ParticipantObjectIdentification") is None


def test_no_patient_attribute_is_ever_written() -> None:
    xml = atna.audit_message(
        event_of(alert("missing"), log="gateway", identity="a"), host="h", node="n", pid=1
    )
    for name in ("PatientName", "PatientID", "PatientBirthDate", "ParticipantObjectName"):
        assert name.encode() not in xml


def test_octet_counting_frames_the_message_by_its_byte_length() -> None:
    assert atna.octet_counted("é".encode()) == b"2 \xc3\xa9"
