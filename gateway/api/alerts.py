"""Integrity alerts: list them a page at a time, acknowledge one (who, when)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import NonNegativeInt

from gateway.api.deps import ReadingAlerts, ServicesDep
from gateway.api.pages import LINK_HEADER, CursorParam, Limit, Page, Pager
from gateway.api.problems import problem_responses
from gateway.trust.alerts import ALERT_ID_PATTERN, AlertKey, ListedAlert, Origin

router = APIRouter(
    prefix="/v1/alerts", tags=["alerts"], responses=problem_responses(401, 403, 422, 500, 503)
)

ALERTS: Pager[AlertKey] = Pager("alerts", tuple[float, Origin, NonNegativeInt])

AlertId = Annotated[
    str,
    Path(
        pattern=ALERT_ID_PATTERN,
        description="an alert's id as listed: `gateway-<n>` or `plugin-<n>`",
    ),
]


@router.get("", response_model=Page[ListedAlert], responses=LINK_HEADER)
def list_alerts(
    services: ServicesDep,
    who: ReadingAlerts,
    request: Request,
    response: Response,
    limit: Limit = 100,
    cursor: CursorParam = None,
    sop_instance_uid: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[ListedAlert]:
    """Integrity alerts, newest first: refusals inside Orthanc, pipeline and audit findings,
    each with who acknowledged it and when."""
    found = services.alerts.page(
        limit=limit, after=ALERTS.decode(cursor), sop_instance_uid=sop_instance_uid, kind=kind
    )
    return ALERTS.page(request, response, found.items, found.next)


@router.post("/{alert_id}/ack", response_model=ListedAlert, responses=problem_responses(404))
def acknowledge_alert(alert_id: AlertId, services: ServicesDep, who: ReadingAlerts) -> ListedAlert:
    """Acknowledge an alert under the token's name. The first acknowledgement stands:
    acknowledging again answers the alert as it was acknowledged then."""
    return services.alerts.acknowledge(alert_id, by=who.name)
