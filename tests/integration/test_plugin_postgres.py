"""Orthanc on PostgreSQL: nodes sharing one index and one storage directory, each with the
integrity plugin, which reads the gateway's evidence through a view as a read-only role.

Real parts: Debian's PostgreSQL (the session's cluster), Orthanc 1.10 with
orthanc-postgresql 4.0 and the Python plugin. The gateway's evidence is recorded in an
SQLite index as the gateway writes it (``plugin_helpers.record``) and copied, row for
row, into the gateway's tables in PostgreSQL (``pg_evidence``).
"""

from __future__ import annotations

import io
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes, read_header
from gateway.errors import IndexUnavailable
from gateway.index.db import Index
from gateway.index.evidence_view import VERSIONS_SQL, VIEW
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.orthanc_plugin.catalog import Catalog
from gateway.orthanc_plugin.evidence import PostgresRecordBook, RecordBook
from gateway.orthanc_plugin.guard import Guard
from gateway.orthanc_plugin.storage import FileArea
from gateway.trust.alerts import Alerts
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.orthanc_nodes import OrthancNodes
from tests.integration.pacs import TestOrthanc
from tests.integration.pg_evidence import copy_index, evidence_reader, reader_connection
from tests.integration.plugin_helpers import flip_pixel_byte, integrity, make_study, record
from tests.integration.postgres import PostgresCluster

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"


# --- the read-only path -------------------------------------------------------------------


@pytest.fixture
def gateway_db(postgres: PostgresCluster, tmp_path: Path) -> tuple[str, str]:
    """A gateway index with one committed row, in PostgreSQL: (owner URL, reader URL)."""
    index = Index(tmp_path / "index.sqlite")
    row = index.add_received(
        entry_id="e1", sop_instance_uid="1.2.3", sop_class_uid=CT, calling_aet="CT1", size=1
    )
    index.update(row, stage="committed", digest=b"\x01" * 32, version=1, tx_hash="0xab")
    index.close()
    url = postgres.create_database()
    copy_index(tmp_path / "index.sqlite", url)
    return url, evidence_reader(postgres, url)


def test_the_reader_role_reads_the_view_and_nothing_else(gateway_db: tuple[str, str]) -> None:
    _, reader = gateway_db
    book = PostgresRecordBook(reader)
    (version,) = book.versions("1.2.3")
    book.close()
    assert version.digest == b"\x01" * 32 and version.tx_hash == "0xab"

    with reader_connection(reader) as db:
        assert db.execute(f"SELECT count(*) FROM {VIEW}").fetchone() == (1,)
        for statement in (
            "SELECT * FROM instances",
            "SELECT calling_aet FROM instances",
            "SELECT * FROM batches",
            f"UPDATE {VIEW} SET digest = '\\x00'::bytea",
            f"DELETE FROM {VIEW}",
            f"INSERT INTO {VIEW} (seq, sop_instance_uid) VALUES (99, '9.9')",
            "UPDATE instances SET stage = 'rejected'",
            "CREATE TABLE forged (x int)",
            f"CREATE OR REPLACE VIEW {VIEW} AS SELECT 1 AS seq",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(statement)
    # its sessions start read-only too (set by grant_evidence_reader): not even a
    # temporary table, which PostgreSQL lets every role make
    with (
        psycopg.connect(reader, autocommit=True) as db,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        db.execute("CREATE TEMPORARY TABLE scratch (x int)")


def test_the_view_holds_only_what_the_plugin_reads(gateway_db: tuple[str, str]) -> None:
    owner, _ = gateway_db
    with psycopg.connect(owner) as db:
        columns = {
            str(name)
            for (name,) in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                (VIEW,),
            )
        }
        assert "seq" in columns and "digest" in columns
        for private in ("calling_aet", "study_instance_uid", "series_instance_uid",
                        "object_name", "last_error", "entry_id", "modality", "body_part"):  # fmt: skip
            assert private not in columns
        # one indexed query per look-up, whatever the table's size
        db.execute("SET enable_seqscan = off")
        plan = "\n".join(
            str(line)
            for (line,) in db.execute(
                "EXPLAIN " + VERSIONS_SQL.replace("%s", "'1.2.3'")  # type: ignore[operator]
            )
        )
        assert "instances_uid" in plan, plan


def test_the_look_up_survives_its_connections_being_cut(gateway_db: tuple[str, str]) -> None:
    """A PostgreSQL restart or failover cuts the pool's connections: the next read retries."""
    owner, reader = gateway_db
    book = PostgresRecordBook(reader)
    try:
        assert len(book.versions("1.2.3")) == 1
        role = reader.split("://", 1)[1].split(":", 1)[0]
        with psycopg.connect(owner, autocommit=True) as db:
            cut = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            ).fetchone()
        assert cut is not None and cut[0] >= 1
        assert len(book.versions("1.2.3")) == 1
    finally:
        book.close()


def test_a_wrong_password_is_unavailable_without_the_password_in_the_message(
    gateway_db: tuple[str, str],
) -> None:
    _, reader = gateway_db
    secret = reader.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    wrong = reader.replace(secret, "not-the-" + secret)
    book = PostgresRecordBook(wrong, timeout=1.0)
    with pytest.raises(IndexUnavailable) as caught:
        book.versions("1.2.3")
    book.close()
    assert secret not in str(caught.value) and "not-the-" not in str(caught.value)


def test_versions_and_verdicts_through_the_view_equal_those_through_the_sqlite_file(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """Every kind of row the index holds, then every kind of copy, judged on both engines."""
    files = dicom_fixtures.ct_series(tmp_path / "in", count=5, rows=16, cols=16)
    index = Index(tmp_path / "index.sqlite")
    facts = []
    for path in files:
        data = path.read_bytes()
        fp = fingerprint_bytes(data)
        facts.append((data, fp, read_header(io.BytesIO(data)).sop_instance_uid))

    def add(sop: str, stage: str, **values: object) -> None:
        row = index.add_received(
            entry_id=str(uuid.uuid4()), sop_instance_uid=sop, sop_class_uid=CT,
            calling_aet="CT1", size=1,
        )  # fmt: skip
        index.update(row, stage=stage, **values)

    (d0, f0, s0), (d1, f1, s1), (d2, f2, s2), (d3, _, s3), (d4, f4, s4) = facts
    anchored = {"tx_hash": "0x" + "ab" * 32, "block_number": 3, "block_time": 1_700_000_000,
                "recorder": "0x" + "11" * 20}  # fmt: skip
    add(s0, "committed", digest=f0.digest, pixel_digest=f0.pixel_digest, version=1,
        record_key=b"k" * 32, patient_key=b"p" * 32, transfer_syntax=f0.transfer_syntax,
        **anchored)  # fmt: skip
    add(s0, "duplicate", digest=f0.digest, version=1)  # not a version
    add(s1, "committed", digest=b"\x07" * 32, version=1, **anchored)  # an older version
    add(s1, "committed", digest=f1.digest, pixel_digest=f1.pixel_digest, version=2,
        batch_id=4, leaf_index=1, proof=b"\x05" * 64, **anchored)  # fmt: skip
    add(s2, "anchor", digest=f2.digest, version=1)  # fingerprinted, not anchored yet
    add(s3, "fingerprint")  # received, not fingerprinted: no version yet
    add(s4, "rejected", digest=f4.digest)  # never a version
    index.close()
    url = postgres.create_database()
    copy_index(tmp_path / "index.sqlite", url)
    reader = evidence_reader(postgres, url)

    on_file, on_view = RecordBook(tmp_path / "index.sqlite"), PostgresRecordBook(reader)
    for _, _, sop in facts:
        assert on_view.versions(sop) == on_file.versions(sop), sop
    assert len(on_view.versions(s1)) == 2 and on_view.versions(s3) == ()

    def guard(records: RecordBook | PostgresRecordBook, name: str) -> Guard:
        return Guard(
            area=FileArea(tmp_path / name / "storage", sync=False),
            catalog=Catalog(tmp_path / name / "catalog.sqlite"),
            records=records,
            alerts=Alerts(tmp_path / name / "alerts.sqlite"),
        )

    guards = {"file": guard(on_file, "file"), "view": guard(on_view, "view")}
    copies = [d0, d1, d2, d3, d4, bytearray(d0), bytearray(d1)]
    for tampered in copies[-2:]:
        tampered[-10] ^= 0xFF  # a pixel byte: a copy no version has
    statuses: dict[str, list[str]] = {"file": [], "view": []}
    for name, g in guards.items():
        for n, data in enumerate(copies):
            g.create(f"{n:08x}-0000-0000-0000-000000000000", 1, bytes(data))
            statuses[name].append(
                g.check(f"{n:08x}-0000-0000-0000-000000000000", bytes(data)).status
            )
    on_view.close()
    assert statuses["view"] == statuses["file"]
    assert statuses["view"] == [
        "intact", "intact", "pending", "unregistered", "unregistered", "tampered", "tampered",
    ]  # fmt: skip


# --- several Orthancs on one index --------------------------------------------------------


@dataclass
class Cluster:
    """Orthanc nodes on one index and storage, and the gateway's evidence they read."""

    orthancs: OrthancNodes
    gateway_index: str  # the gateway's database (its owner's URL)
    reader_url: str  # the plugin's role
    sqlite_index: Path  # the same evidence as the gateway's SQLite file

    def auth(self, node: str) -> tuple[str, str]:
        return self.orthancs.auth(node)

    def url(self, node: str) -> str:
        return self.orthancs.url(node)


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Nodes ``a`` and ``b`` read the evidence through the view; ``sqlite`` (same Orthanc
    index and storage) reads the same evidence from the gateway's SQLite file."""
    root = tmp_path_factory.mktemp("orthanc-pg")
    orthanc_index = postgres.create_database()
    gateway_index = postgres.create_database()
    evidence = root / "gateway"
    Index(evidence / "index.sqlite").close()
    copy_index(evidence / "index.sqlite", gateway_index)  # the tables, no rows yet
    reader = evidence_reader(postgres, gateway_index)
    orthancs = OrthancNodes.start(
        root,
        orthanc_index=orthanc_index,
        plugin_configs={
            "a": plugin_section(data_dir=root / "a", index_url=reader),
            "b": plugin_section(data_dir=root / "b", index_url=reader),
            "sqlite": plugin_section(data_dir=evidence, alerts_dir=root / "sqlite"),
        },
    )
    try:
        yield Cluster(
            orthancs=orthancs, gateway_index=gateway_index, reader_url=reader,
            sqlite_index=evidence / "index.sqlite",
        )  # fmt: skip
    finally:
        orthancs.stop()


def recorded_study(cluster: Cluster, tmp_path: Path, *, count: int) -> tuple[list[Path], list[str]]:
    """A study recorded by the gateway (SQLite file and PostgreSQL alike), stored through node a."""
    study = make_study(tmp_path, count=count)
    record(cluster.sqlite_index, study.files)
    copy_index(cluster.sqlite_index, cluster.gateway_index)
    ids = []
    for path in study.files:
        reply = requests.post(
            f"{cluster.url('a')}/instances", data=path.read_bytes(), auth=cluster.auth("a"),
            timeout=60,
        )  # fmt: skip
        reply.raise_for_status()
        ids.append(str(reply.json()["ID"]))
    return study.files, ids


def test_the_nodes_run_on_the_postgresql_index(cluster: Cluster) -> None:
    for node in cluster.orthancs.nodes.values():
        log = node.log()
        assert "PostgreSQL" in log, log[-2000:]
        assert "xray-gateway plugin: storage area checks every DICOM read" in log
    # the password of the reader role is never logged; its URL is, redacted
    reader_password = cluster.reader_url.split("@", 1)[0].rsplit(":", 1)[1]
    assert all(reader_password not in node.log() for node in cluster.orthancs.nodes.values())


def test_an_instance_stored_through_one_node_is_served_intact_by_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    files, ids = recorded_study(cluster, tmp_path, count=3)

    listed = requests.get(f"{cluster.url('b')}/instances", auth=cluster.auth("b"), timeout=30)
    assert set(ids) <= set(listed.json())  # one index: b knows what a stored
    for path, orthanc_id in zip(files, ids, strict=True):
        for node in ("a", "b", "sqlite"):
            answer = integrity(cluster.url(node), cluster.auth(node), "instances", orthanc_id)
            assert answer["status"] == "intact", (node, answer)
            reply = requests.get(
                f"{cluster.url(node)}/instances/{orthanc_id}/file", auth=cluster.auth(node),
                timeout=60,
            )  # fmt: skip
            assert reply.status_code == 200 and reply.content == path.read_bytes(), node


def test_a_tampered_file_is_refused_by_every_node(cluster: Cluster, tmp_path: Path) -> None:
    _, ids = recorded_study(cluster, tmp_path, count=2)
    flip_pixel_byte(cluster.orthancs.stored_path(ids[0]))

    for node in ("a", "b", "sqlite"):
        answer = integrity(cluster.url(node), cluster.auth(node), "instances", ids[0])
        assert answer["status"] == "tampered" and answer["served"] is False, (node, answer)
        refused = requests.get(
            f"{cluster.url(node)}/instances/{ids[0]}/file", auth=cluster.auth(node), timeout=60
        )
        assert refused.status_code != 200, node
        untouched = integrity(cluster.url(node), cluster.auth(node), "instances", ids[1])
        assert untouched["status"] == "intact", (node, untouched)


def test_reads_with_evidence_in_postgresql_and_in_sqlite(cluster: Cluster, tmp_path: Path) -> None:
    """The same files through node a (the view) and node sqlite (the file), alternating.

    A measurement, printed (``-s``) for docs/scale-out.md; what is asserted is that both
    serve every file, not how fast.
    """
    files, ids = recorded_study(cluster, tmp_path, count=20)
    # a running gateway holds its index open (WAL): the plugin's SQLite path then keeps
    # one connection per thread, rather than opening the closed file for every read
    writer = Index(cluster.sqlite_index)
    spent: dict[str, list[float]] = {"a": [], "sqlite": []}
    sessions = {}
    for node in spent:
        sessions[node] = requests.Session()
        sessions[node].auth = cluster.auth(node)
        for orthanc_id in ids:  # warm: connections, OS caches
            assert sessions[node].get(f"{cluster.url(node)}/instances/{orthanc_id}/file").ok
    for rep in range(5):
        for n, orthanc_id in enumerate(ids):
            order = ("a", "sqlite") if (n + rep) % 2 == 0 else ("sqlite", "a")
            for node in order:
                start = time.perf_counter()
                reply = sessions[node].get(f"{cluster.url(node)}/instances/{orthanc_id}/file")
                spent[node].append(time.perf_counter() - start)
                assert reply.status_code == 200 and len(reply.content) == files[n].stat().st_size
    # the look-up alone, in this process: the same UIDs through both engines, alternated
    sops = [str(read_header(io.BytesIO(path.read_bytes())).sop_instance_uid) for path in files]
    pg_book = PostgresRecordBook(cluster.reader_url)
    books = {"a": pg_book, "sqlite": RecordBook(cluster.sqlite_index)}
    lookups: dict[str, list[float]] = {"a": [], "sqlite": []}
    for rep in range(50):
        for sop in sops:
            for name in ("a", "sqlite") if rep % 2 == 0 else ("sqlite", "a"):
                start = time.perf_counter()
                assert len(books[name].versions(sop)) == 1
                lookups[name].append(time.perf_counter() - start)
    pg_book.close()
    writer.close()
    print(
        f"\none look-up, median of {len(lookups['a'])}: PostgreSQL view"
        f" {statistics.median(lookups['a']) * 1e6:.0f} µs,"
        f" SQLite file {statistics.median(lookups['sqlite']) * 1e6:.0f} µs"
    )
    pg, lite = statistics.median(spent["a"]), statistics.median(spent["sqlite"])
    print(
        f"\n/file of a {files[0].stat().st_size}-byte CT slice, median of {len(spent['a'])}:"
        f" evidence in PostgreSQL {pg * 1000:.2f} ms, in SQLite {lite * 1000:.2f} ms"
        f" ({(pg / lite - 1) * 100:+.1f} %)"
    )


# --- `up` with its Orthanc on PostgreSQL, and a second node beside it -----------------------


def until_settled(url: str, auth: tuple[str, str], orthanc_id: str) -> dict[str, object]:
    """The verdict once it is no longer ``unconfirmed`` (the ledger mirror polls every 2 s),
    or the last one after a minute."""
    answer = integrity(url, auth, "instances", orthanc_id)
    deadline = time.monotonic() + 60
    while answer["status"] == "unconfirmed" and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = integrity(url, auth, "instances", orthanc_id)
    return answer


def test_up_runs_orthanc_on_postgresql_and_a_second_node_serves_what_it_received(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """A real `up` (pipeline, anvil, plugin with its ledger mirror) whose Orthanc keeps its
    index in PostgreSQL and whose plugin reads the evidence through the view
    (GATEWAY_PLUGIN_INDEX_URL); node b joins that index and storage and reads the
    gateway's SQLite file. The gateway's own index is SQLite on this branch: its rows are
    copied into the PostgreSQL tables the view reads once the pipeline committed them."""
    orthanc_index = postgres.create_database()
    gateway_index = postgres.create_database()
    empty = tmp_path / "empty.sqlite"
    Index(empty).close()
    copy_index(empty, gateway_index)
    reader = evidence_reader(postgres, gateway_index)
    up = Up(
        gateway_env(
            tmp_path / "var", GATEWAY_ORTHANC_INDEX_URL=orthanc_index,
            GATEWAY_PLUGIN_INDEX_URL=reader,
        )
    )  # fmt: skip
    node_b: TestOrthanc | None = None
    try:
        study = make_study(tmp_path, count=3)
        result = storescu(up.dicom_port, study.files)
        assert result.returncode == 0, result.stdout[-2000:]
        rows = up.wait_done(3)
        assert [row["stage"] for row in rows] == ["committed"] * 3
        log = (up.data_dir / "orthanc" / "orthanc.log").read_text(errors="replace")
        assert "PostgreSQL" in log and orthanc_index.rsplit("@", 1)[0] not in log
        assert reader.rsplit("@", 1)[0] not in log  # the evidence role's password neither
        up_auth = tuple(
            json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text()).values()
        )
        up_url = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
        first = str(rows[0]["orthanc_id"])
        # the view is empty so far: up's plugin reads it, not index.sqlite
        before = integrity(up_url, up_auth, "instances", first)  # type: ignore[arg-type]
        assert before["status"] == "unregistered", before
        copy_index(up.data_dir / "index.sqlite", gateway_index)
        for row in rows:  # `unconfirmed` until the plugin's ledger mirror has the anchor
            answer = until_settled(up_url, up_auth, str(row["orthanc_id"]))  # type: ignore[arg-type]
            assert answer["status"] == "intact", answer

        storage = up.data_dir / "orthanc" / "storage"
        node_b = TestOrthanc(
            data_dir=tmp_path / "b",
            aet="PACSB",
            plugin=ENTRY_SCRIPT,
            plugin_config=plugin_section(data_dir=up.data_dir, alerts_dir=tmp_path / "b"),
            index_url=orthanc_index,
            storage_dir=storage,
        ).start()
        auth = node_b.orthanc.credentials
        up_auth = tuple(
            json.loads((up.data_dir / "keys" / "orthanc-http.json").read_text()).values()
        )
        up_url = f"http://127.0.0.1:{up.env['GATEWAY_ORTHANC_HTTP_PORT']}"
        for row in rows:
            orthanc_id = str(row["orthanc_id"])
            answer = integrity(node_b.orthanc.url, auth, "instances", orthanc_id)
            assert answer["status"] == "intact", answer
            reply = requests.get(
                f"{node_b.orthanc.url}/instances/{orthanc_id}/file", auth=auth, timeout=60
            )
            # the dataset as received (the gateway writes its own File Meta)
            assert reply.status_code == 200
            assert fingerprint_bytes(reply.content).digest == bytes(row["digest"])

        tampered = str(rows[0]["orthanc_id"])
        info = requests.get(
            f"{node_b.orthanc.url}/instances/{tampered}/attachments/dicom/info", auth=auth,
            timeout=30,
        ).json()  # fmt: skip
        uuid_ = str(info["Uuid"])
        flip_pixel_byte(storage / uuid_[:2] / uuid_[2:4] / uuid_)
        for url, credentials in ((up_url, up_auth), (node_b.orthanc.url, auth)):
            answer = integrity(url, credentials, "instances", tampered)  # type: ignore[arg-type]
            assert answer["status"] == "tampered" and answer["served"] is False, (url, answer)
            refused = requests.get(f"{url}/instances/{tampered}/file", auth=credentials, timeout=60)
            assert refused.status_code != 200, url
    finally:
        if node_b is not None:
            node_b.stop()
        assert up.stop() == 0
