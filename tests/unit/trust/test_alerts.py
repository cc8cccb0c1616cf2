"""The gateway lists its own alerts and the Orthanc plugin's, kept in a file it only reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import AlertsUnavailable, UnknownAlert
from gateway.stack import gateway_alerts
from gateway.trust.alerts import Alerts


def test_the_plugin_alerts_are_listed_with_the_gateway_ones(tmp_path: Path) -> None:
    plugin = Alerts(tmp_path / "orthanc" / "alerts.sqlite")  # what the plugin writes
    mine = Alerts(tmp_path / "data" / "alerts.sqlite", plugin_alerts=plugin.path)
    mine.record(kind="spool_swapped", source="pipeline", detail="a", sop_instance_uid="1.2")
    plugin.record(kind="tampered", source="plugin", detail="b", sop_instance_uid="1.2")
    mine.record(kind="missing", source="audit", detail="c", sop_instance_uid="1.3")

    assert [a.detail for a in mine.recent()] == ["c", "b", "a"]
    assert [a.detail for a in mine.recent(limit=2)] == ["c", "b"]
    assert [a.detail for a in mine.recent(sop_instance_uid="1.2")] == ["b", "a"]
    assert [a.detail for a in mine.recent(kind="tampered")] == ["b"]
    # the gateway's side never writes the plugin's file
    assert [a.detail for a in plugin.recent()] == ["b"]


def test_no_plugin_alerts_yet_is_an_empty_list(tmp_path: Path) -> None:
    mine = Alerts(tmp_path / "alerts.sqlite", plugin_alerts=tmp_path / "none" / "alerts.sqlite")
    mine.record(kind="error", source="audit", detail="x")

    assert [a.detail for a in mine.recent()] == ["x"]
    assert not (tmp_path / "none").exists()


def test_a_plugin_file_left_by_a_stopped_writer_is_read(tmp_path: Path) -> None:
    path = tmp_path / "orthanc" / "alerts.sqlite"
    plugin = Alerts(path)
    plugin.record(kind="tampered", source="plugin", detail="b")
    plugin.close()  # Orthanc stopped: its -wal and -shm are gone
    assert not path.with_name("alerts.sqlite-wal").exists()

    mine = Alerts(tmp_path / "alerts.sqlite", plugin_alerts=path)

    assert [a.detail for a in mine.recent()] == ["b"]


def test_an_unreadable_plugin_file_is_an_error_not_silence(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite-plugin"
    path.write_bytes(b"not a database" * 100)
    mine = Alerts(tmp_path / "alerts.sqlite", plugin_alerts=path)

    with pytest.raises(AlertsUnavailable):
        mine.recent()


def test_the_embedded_stack_shares_one_file_and_docker_reads_the_plugin_volume(
    tmp_path: Path,
) -> None:
    embedded = Settings(data_dir=tmp_path / "data")
    docker = Settings(data_dir=tmp_path / "data", plugin_alerts_dir=tmp_path / "plugin")

    assert embedded.plugin_alerts_path == embedded.alerts_path
    assert gateway_alerts(embedded).plugin_alerts is None
    assert gateway_alerts(docker).plugin_alerts == tmp_path / "plugin" / "alerts.sqlite"


def two_files_with_colliding_ids(tmp_path: Path) -> tuple[Alerts, Alerts]:
    """The gateway's file and the plugin's, each numbering its alerts from 1, all at one time."""
    plugin = Alerts(tmp_path / "orthanc" / "alerts.sqlite")
    mine = Alerts(tmp_path / "data" / "alerts.sqlite", plugin_alerts=plugin.path)
    return mine, plugin


def test_pages_walk_both_files_once_each_even_at_equal_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, plugin = two_files_with_colliding_ids(tmp_path)
    monkeypatch.setattr("gateway.trust.alerts.time.time", lambda: 1000.0)
    for n in range(3):
        mine.record(kind="missing", source="audit", detail=f"g{n}")
        plugin.record(kind="tampered", source="plugin", detail=f"p{n}")
    monkeypatch.setattr("gateway.trust.alerts.time.time", lambda: 2000.0)
    mine.record(kind="missing", source="audit", detail="newest")

    seen, after, pages = [], None, 0
    while True:
        page = mine.page(limit=2, after=after)
        seen += [alert.id for alert in page.items]
        pages += 1
        if page.next is None:
            break
        after = page.next

    assert seen == [
        "gateway-4", "plugin-3", "plugin-2", "plugin-1", "gateway-3", "gateway-2", "gateway-1",
    ]  # fmt: skip
    assert pages == 4
    assert [a.id for a in mine.page(limit=10, kind="tampered").items] == [
        "plugin-3", "plugin-2", "plugin-1",
    ]  # fmt: skip
    assert mine.page(limit=7).next is None


def test_an_ack_names_one_alert_of_one_file_and_the_first_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, plugin = two_files_with_colliding_ids(tmp_path)
    mine.record(kind="missing", source="audit", detail="mine")
    plugin.record(kind="tampered", source="plugin", detail="the plugin's")
    monkeypatch.setattr("gateway.trust.alerts.time.time", lambda: 5000.0)

    acked = mine.acknowledge("plugin-1", by="alice")
    monkeypatch.setattr("gateway.trust.alerts.time.time", lambda: 6000.0)
    again = mine.acknowledge("plugin-1", by="bob")

    assert (acked.detail, acked.acknowledged_by, acked.acknowledged_at) == (
        "the plugin's", "alice", 5000.0,
    )  # fmt: skip
    assert again == acked
    listed = {a.id: a.acknowledged_by for a in mine.page().items}
    assert listed == {"plugin-1": "alice", "gateway-1": None}
    assert mine.get("gateway-1").acknowledged_at is None
    # the plugin's file is only read: the ack is in the gateway's own
    assert plugin._db.execute("SELECT count(*) FROM alert_acks").fetchone() == (0,)
    with pytest.raises(UnknownAlert):
        mine.acknowledge("plugin-2", by="alice")
    with pytest.raises(UnknownAlert):
        mine.get("orthanc-1")


def test_without_a_plugin_file_every_alert_is_the_gateways(tmp_path: Path) -> None:
    mine = Alerts(tmp_path / "alerts.sqlite")
    mine.record(kind="missing", source="plugin", detail="written by the plugin, same file")

    assert [a.id for a in mine.page().items] == ["gateway-1"]
    with pytest.raises(UnknownAlert):
        mine.get("plugin-1")
