"""Node ids: stable for one node, apart for two, and the worker ids they qualify."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.core.nodes import default_node_id, node_of, worker_id
from gateway.index.db import Index
from gateway.ingest.pipeline import ANYWHERE


def test_the_default_node_id_is_stable_per_data_dir_and_differs_between_two(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a" / "var", tmp_path / "b" / "var"
    assert default_node_id("ct-room.example", a) == default_node_id("ct-room.example", a)
    assert default_node_id("ct-room.example", a) != default_node_id("ct-room.example", b)
    assert default_node_id("ct-room.example", a) != default_node_id("mr-room", a)
    assert default_node_id("ct-room.example", a).startswith("ct-room.example-")
    assert default_node_id("weird host/name", a).startswith("weird-host-name-")


def test_the_setting_wins_and_a_blank_one_means_derived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_NODE_ID", "gw-east")
    assert Settings().node == "gw-east"
    monkeypatch.setenv("GATEWAY_NODE_ID", "")  # as docker/.env.example leaves it
    assert Settings().node == Settings(data_dir=tmp_path).node != "gw-east"
    for bad in ("a/b", "-lead", "x" * 41, "sp ace"):
        monkeypatch.setenv("GATEWAY_NODE_ID", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_worker_ids_carry_their_node() -> None:
    assert worker_id("gw-east", "up-1") == "gw-east/up-1"
    assert node_of("gw-east/up-1") == "gw-east"
    assert node_of("up-1") == ""  # a claim from before node ids


def test_a_restarted_worker_frees_its_own_claims_never_another_nodes(tmp_path: Path) -> None:
    """Two nodes each run worker ``up-1``: the first's restart leaves the second's rows held."""
    index = Index(tmp_path / "index.sqlite")
    for n in range(4):
        index.add_received(
            entry_id=f"e{n}", sop_instance_uid=f"1.2.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            calling_aet="CT1", size=1,
        )  # fmt: skip
    east, west = worker_id("east", "up-1"), worker_id("west", "up-1")
    assert len(index.claim_due(east, stages=("fingerprint",), limit=2, lease_s=60)) == 2
    assert len(index.claim_due(west, stages=("fingerprint",), limit=2, lease_s=60)) == 2
    assert index.release_claims(east) == 2  # east's up-1 starts again
    assert index.claim_counts() == {west: 2}
    index.close()


def test_a_row_before_put_is_worked_only_by_the_node_that_received_it(tmp_path: Path) -> None:
    """The spool is per node: another node's workers must not take a row it cannot read,
    but may anchor one (the anchor stage reads no local file)."""
    index = Index(tmp_path / "index.sqlite")
    ct = "1.2.840.10008.5.1.4.1.1.2"
    east_row = index.add_received(entry_id="e1", sop_instance_uid="1.2.1", sop_class_uid=ct,
                                  calling_aet="CT1", size=1, received_by="east")  # fmt: skip
    old_row = index.add_received(entry_id="e2", sop_instance_uid="1.2.2", sop_class_uid=ct,
                                 calling_aet="CT1", size=1)  # fmt: skip
    west = worker_id("west", "up-1")
    taken = index.claim_due(west, stages=("fingerprint",), limit=10, lease_s=60)
    assert [r.id for r in taken] == [old_row]  # a row from before node ids: anyone's
    east = worker_id("east", "up-1")
    taken = index.claim_due(east, stages=("fingerprint",), limit=10, lease_s=60)
    assert [r.id for r in taken] == [east_row]
    index.unclaim(east, [east_row])
    index.update(east_row, stage="anchor")
    assert index.claim_due(west, stages=("anchor",), limit=10, lease_s=60) == []
    taken = index.claim_due(west, stages=("anchor",), anywhere=ANYWHERE, limit=10, lease_s=60)
    assert [r.id for r in taken] == [east_row]  # the stage table: anchor needs no local file
    index.close()
