"""An alert as the event webhooks and syslog carry: a stable id and a JSON body (pure).

The id names the alert's origin, so the same alert always makes the same event, however
often it is enqueued or delivered: ``xray_<node>_<log>_<alert id>``, where ``log`` is
``gateway`` (the gateway's ``alerts.sqlite``) or ``plugin`` (the Orthanc plugin's). A
receiver that remembers the ids it processed (as Standard Webhooks asks receivers to)
processes each alert once.

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


def event_id(*, node: str, log: str, alert_id: int) -> str:
    """The stable id of alert ``alert_id`` of ``log`` on ``node``."""
    return f"xray_{node}_{log}_{alert_id}"


def event_of(alert: Alert, *, node: str, log: str) -> Event:
    """The event for ``alert``, read from ``log`` (one of :data:`LOGS`) on ``node``.

    The body follows Standard Webhooks' recommended shape: ``type``, ``timestamp`` (when
    the alert was recorded) and ``data``.
    """
    at = datetime.fromtimestamp(alert.at, UTC)
    body = {
        "type": f"alert.{alert.kind}",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "data": {
            "id": event_id(node=node, log=log, alert_id=alert.id),
            "kind": alert.kind,
            "source": alert.source,
            "node": node,
            "log": log,
            "alert_id": alert.id,
            "at": alert.at,
            "sop_instance_uid": alert.sop_instance_uid,
            "orthanc_id": alert.orthanc_id,
            "detail": alert.detail,
        },
    }
    encoded = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return Event(id=event_id(node=node, log=log, alert_id=alert.id), kind=alert.kind, body=encoded)
