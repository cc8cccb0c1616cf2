"""The gateway lists its own alerts and the Orthanc plugin's, kept in a file it only reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import AlertsUnavailable
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
