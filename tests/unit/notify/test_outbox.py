"""The outbox on a SQLite index: idempotent enqueue past a mark, exclusive claims, retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import DeliveryFailed
from gateway.index.db import Index
from gateway.notify.events import Event
from gateway.notify.notifier import Notifier
from gateway.notify.outbox import Outbox
from gateway.trust.alerts import Alerts, log_identity


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    opened = Index(tmp_path / "index.sqlite")
    yield opened
    opened.close()


def record(alerts: Alerts, kind: str = "tampered", uid: str = "1.2.3") -> int:
    return alerts.record(kind=kind, source="plugin", detail="d", sop_instance_uid=uid)


def test_enqueue_starts_at_the_logs_end_then_takes_each_alert_once(
    index: Index, tmp_path: Path
) -> None:
    alerts = Alerts(tmp_path / "alerts.sqlite")
    record(alerts, uid="1.1")  # history before notifications were on: not sent
    outbox = Outbox(index, targets=("webhook:a", "syslog"))
    assert outbox.enqueue("gateway", alerts.path) == 0
    first = record(alerts, uid="1.2")
    record(alerts, kind="parked", uid="1.3")
    assert outbox.enqueue("gateway", alerts.path) == 2
    assert outbox.enqueue("gateway", alerts.path) == 0  # past the mark now
    assert outbox.counts() == {("webhook:a", "pending"): 2, ("syslog", "pending"): 2}
    (claimed, _) = outbox.claim("webhook:a", "n/notify", limit=10, lease_s=30)
    assert claimed.event.id == f"xray_gateway-{log_identity(alerts.path)}_{first}"
    assert json.loads(claimed.event.body)["data"]["sop_instance_uid"] == "1.2"


def test_a_log_that_does_not_exist_yet_starts_at_zero(index: Index, tmp_path: Path) -> None:
    outbox = Outbox(index, targets=("syslog",))
    assert outbox.enqueue("plugin", tmp_path / "plugin" / "alerts.sqlite") == 0
    alerts = Alerts(tmp_path / "plugin" / "alerts.sqlite")
    record(alerts)
    assert outbox.enqueue("plugin", alerts.path) == 1


def test_two_nodes_reading_one_shared_log_enqueue_each_alert_once(
    index: Index, tmp_path: Path
) -> None:
    shared = Alerts(tmp_path / "plugin" / "alerts.sqlite")  # one volume, two gateway nodes
    one, two = Outbox(index, targets=("syslog",)), Outbox(index, targets=("syslog",))
    one.enqueue("plugin", shared.path), two.enqueue("plugin", shared.path)
    record(shared)
    record(shared)
    assert one.enqueue("plugin", shared.path) + two.enqueue("plugin", shared.path) == 2
    other = Alerts(tmp_path / "other" / "alerts.sqlite")  # another log: another name
    other.record(kind="tampered", source="plugin", detail="d")
    assert log_identity(other.path) not in (None, log_identity(shared.path))
    assert index.query("SELECT COUNT(*) FROM notify_outbox") == [(2,)]


def test_a_claimed_event_is_not_claimed_again_until_released_or_expired(
    index: Index, tmp_path: Path
) -> None:
    alerts = Alerts(tmp_path / "alerts.sqlite")
    outbox = Outbox(index, targets=("syslog",))
    outbox.enqueue("gateway", alerts.path)
    record(alerts)
    outbox.enqueue("gateway", alerts.path)
    assert len(outbox.claim("syslog", "a/notify", limit=5, lease_s=30)) == 1
    assert outbox.claim("syslog", "b/notify", limit=5, lease_s=30) == []
    assert outbox.release_claims("a/notify") == 1
    (again,) = outbox.claim("syslog", "b/notify", limit=5, lease_s=30)
    outbox.failed(again.row_id, "b/notify", "HTTP 500", retry_in=3600)
    assert outbox.claim("syslog", "b/notify", limit=5, lease_s=30) == []  # not due yet
    assert index.query("SELECT attempts, last_error FROM notify_outbox") == [(1, "HTTP 500")]


class Recorder:
    """A target that records what it got; ``fail`` makes it refuse everything."""

    def __init__(self, target: str, *, fail: bool = False) -> None:
        self.target = target
        self.shown = target
        self.fail = fail
        self.got: list[Event] = []
        self.closed = False

    def send(self, event: Event) -> None:
        if self.fail:
            raise DeliveryFailed(f"{self.target}: HTTP 503")
        self.got.append(event)

    def close(self) -> None:
        self.closed = True


def test_a_refusing_target_never_holds_back_another(index: Index, tmp_path: Path) -> None:
    alerts = Alerts(tmp_path / "alerts.sqlite")
    good, bad = Recorder("webhook:good"), Recorder("webhook:bad", fail=True)
    notifier = Notifier(index=index, senders=[bad, good], logs={"gateway": alerts.path}, node="n")
    notifier.enqueue_once()
    ids = [record(alerts, uid=f"1.{n}") for n in range(3)]
    assert notifier.enqueue_once() == 3
    assert notifier.send_due(bad) == 3 and notifier.send_due(good) == 3
    name = log_identity(alerts.path)
    assert [e.id for e in good.got] == [f"xray_gateway-{name}_{i}" for i in ids]
    states = dict(((t, s), n) for (t, s), n in notifier.outbox.counts().items())
    assert states == {("webhook:good", "delivered"): 3, ("webhook:bad", "pending"): 3}
    assert notifier.send_due(good) == 0 and notifier.send_due(bad) == 0  # backing off
    backoffs = index.query(
        "SELECT next_attempt_at - created_at FROM notify_outbox WHERE target = 'webhook:bad'"
    )
    assert all(0.5 < wait < 60 for (wait,) in backoffs)


def test_the_loop_delivers_what_is_recorded_while_it_runs(index: Index, tmp_path: Path) -> None:
    alerts = Alerts(tmp_path / "alerts.sqlite")
    got = threading.Event()

    class Signalling(Recorder):
        def send(self, event: Event) -> None:
            super().send(event)
            got.set()

    target = Signalling("syslog")
    notifier = Notifier(
        index=index, senders=[target], logs={"gateway": alerts.path}, node="n", poll_s=0.05
    )
    notifier.enqueue_once()  # the log's mark: what comes next is sent
    notifier.start()
    try:
        record(alerts, kind="unregistered")
        assert got.wait(30), "never delivered"
    finally:
        notifier.stop()
    assert [e.kind for e in target.got] == ["unregistered"] and target.closed
