"""An alert as the event webhooks and syslog carry: a stable id and a JSON body (pure).

The id names the alert's origin, so the same alert always makes the same event, however
often and by whichever gateway node it is enqueued or delivered:
``xray_<log>-<log identity>_<alert id>``, where ``log`` is ``gateway`` (the gateway's
``alerts.sqlite``) or ``plugin`` (the Orthanc plugin's), and the identity names that
file (:func:`gateway.trust.alerts.log_identity`), so that two nodes reading one shared
plugin log make one event per alert. A receiver that remembers the ids it processed (as
Standard Webhooks asks receivers to) processes each alert once.

The body never holds patient data: an alert names an instance by its SOP Instance UID
and Orthanc id only (:mod:`gateway.trust.alerts`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.trust.alerts import Alert

#: The alert logs an event may come from.
LOGS = ("gateway", "plugin")


@dataclass(frozen=True)
class Event:
    """One alert, ready to send: its id, its kind and its JSON body (UTF-8 bytes)."""

    id: str
    kind: str
    body: bytes

    @property
    def data(self) -> dict[str, object]:
        """The body's ``data`` object (the alert's fields)."""
        decoded: dict[str, object] = json.loads(self.body)["data"]
        return decoded


def source_of(log: str, identity: str) -> str:
    """The name of one alert log: ``<log>-<identity>`` (``plugin-3fa2b1c4d5e6``)."""
    return f"{log}-{identity}"


def event_id(*, source: str, alert_id: int) -> str:
    """The stable id of alert ``alert_id`` of the log named ``source``."""
    return f"xray_{source}_{alert_id}"


def event_of(alert: Alert, *, log: str, identity: str) -> Event:
    """The event for ``alert``, read from ``log`` (one of :data:`LOGS`) named ``identity``.

    The body follows Standard Webhooks' recommended shape: ``type``, ``timestamp`` (when
    the alert was recorded) and ``data``.
    """
    at = datetime.fromtimestamp(alert.at, UTC)
    msg_id = event_id(source=source_of(log, identity), alert_id=alert.id)
    body = {
        "type": f"alert.{alert.kind}",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "data": {
            "id": msg_id,
            "kind": alert.kind,
            "source": alert.source,
            "log": log,
            "alert_id": alert.id,
            "at": alert.at,
            "sop_instance_uid": alert.sop_instance_uid,
            "orthanc_id": alert.orthanc_id,
            "detail": alert.detail,
        },
    }
    encoded = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return Event(id=msg_id, kind=alert.kind, body=encoded)
