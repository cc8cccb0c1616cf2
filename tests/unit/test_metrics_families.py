"""The collector's alert, commit latency and outbox families, read from a SQLite index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import AlertsUnavailable
from gateway.index.db import Index
from gateway.metrics import GatewayCollector, registry_for, render


def scrape(collector: GatewayCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = render(registry_for(collector))[0].decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def anchored(index: Index, n: int, *, after_s: float) -> None:
    row = index.add_received(
        entry_id=f"e{n}", sop_instance_uid=f"1.2.{n}", sop_class_uid="1.2", calling_aet="CT", size=1
    )
    received = index.get(row).received_at
    index.update(row, anchored_at=received + after_s, stage="committed")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    opened = Index(tmp_path / "index.sqlite")
    yield opened
    opened.close()


def test_commit_latency_is_counted_per_bucket_over_anchored_rows(index: Index) -> None:
    for n, after_s in enumerate((0.3, 4.0, 4.5, 7200.0)):
        anchored(index, n, after_s=after_s)
    index.add_received(
        entry_id="w", sop_instance_uid="1.9", sop_class_uid="1.2", calling_aet="CT", size=1
    )
    found = scrape(GatewayCollector(index=index))
    buckets = found["xray_gateway_commit_latency_seconds_bucket"]
    assert buckets[(("le", "0.5"),)] == 1
    assert buckets[(("le", "2.0"),)] == 1 and buckets[(("le", "5.0"),)] == 3
    assert buckets[(("le", "3600.0"),)] == 3 and buckets[(("le", "+Inf"),)] == 4
    assert found["xray_gateway_commit_latency_seconds_count"][()] == 4  # the waiting row: not yet
    assert abs(found["xray_gateway_commit_latency_seconds_sum"][()] - 7208.8) < 1e-6


def test_alerts_by_kind_and_the_outbox_and_an_unreadable_plugin_file(index: Index) -> None:
    collector = GatewayCollector(
        index=index,
        alerts=lambda: {"tampered": 2, "parked": 1},
        outbox=lambda: {("syslog", "delivered"): 3, ("webhook:ab", "pending"): 1},
    )
    found = scrape(collector)
    alerts = found["xray_gateway_alerts_total"]
    assert alerts[(("kind", "tampered"),)] == 2 and alerts[(("kind", "parked"),)] == 1
    assert alerts[(("kind", "missing"),)] == 0  # every kind, so that rate() starts at zero
    events = found["xray_gateway_notify_events"]
    assert events[(("state", "pending"), ("target", "webhook:ab"))] == 1

    def unreadable() -> dict[str, int]:
        raise AlertsUnavailable("the Orthanc plugin's alerts cannot be read")

    collector.alerts = unreadable
    found = scrape(collector)
    assert "xray_gateway_alerts_total" not in found and "xray_gateway_queue_depth" in found
