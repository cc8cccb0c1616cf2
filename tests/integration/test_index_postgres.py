"""The index on a real PostgreSQL server: the engine-independent suites (index, claims), then
what only a server has (two connections deciding at once, claimers passing each other's
row locks, LISTEN/NOTIFY wake-ups, a password in the URL, pg_dump)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.cli import main
from gateway.errors import IndexUnavailable
from gateway.index.backup import pg_environment, pg_tool
from gateway.index.db import Index
from gateway.index.engine import DATABASE_ERRORS
from gateway.ingest.status import status_report
from gateway.ingest.wakeup import CHANNEL, NotifyBell, NotifyDoorbell
from tests.integration.postgres import BIN, PostgresCluster
from tests.unit.index.test_claims import POOLED, ClaimsContract
from tests.unit.index.test_db import KEY, IndexContract, received

pytestmark = pytest.mark.integration


def pg_restore(postgres: PostgresCluster, dump: Path) -> str:
    """A new database holding what ``dump`` (pg_dump's custom format) holds; its URL."""
    url = postgres.create_database()
    dbname, env = pg_environment(url)
    subprocess.run(
        [pg_tool("pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={dbname}", str(dump)],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return url


class TestPostgresIndex(IndexContract):
    @pytest.fixture
    def location(self, postgres: PostgresCluster) -> str:
        return postgres.create_database()

    @pytest.fixture
    def restore(self, postgres: PostgresCluster) -> Any:
        return lambda dest: pg_restore(postgres, dest)


def test_two_connections_claiming_one_record_number_its_versions_once(
    postgres: PostgresCluster,
) -> None:
    """Two indexes (two sessions, as two gateway processes hold) claim rows of one record at
    once: the advisory lock makes every claim see the ones before it."""
    url = postgres.create_database()
    indexes = [Index(url), Index(url)]
    rows = {index: [received(index, f"1.{n}.{i}") for i in range(15)] for n, index in
            enumerate(indexes)}  # fmt: skip
    start = threading.Barrier(len(indexes))
    outcomes: list[tuple[str, int, int | None]] = []

    def claim(index: Index) -> None:
        start.wait()
        for row_id in rows[index]:
            values = {"record_key": KEY, "digest": row_id.to_bytes(32)}
            outcomes.append(
                index.claim_fingerprint(
                    row_id, values, next_stage="seal", duplicate_stage="duplicate"
                )
            )

    threads = [threading.Thread(target=claim, args=(index,)) for index in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(version for _, version, _ in outcomes) == list(range(1, 31))
    assert sorted(r.version or 0 for r in indexes[0].versions_of(KEY)) == list(range(1, 31))
    for index in indexes:
        index.close()


def test_a_wrong_password_is_refused_without_showing_it(postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    wrong = url.replace(postgres.password, "not-the-password-42")
    with pytest.raises(IndexUnavailable) as refused:
        Index(wrong)
    assert "password authentication failed" in str(refused.value)
    assert "not-the-password-42" not in str(refused.value)
    assert postgres.password not in str(refused.value)


def test_status_and_backup_on_postgres_never_show_the_password(
    postgres: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url = postgres.create_database()
    index = Index(url)
    received(index, "1.1", stage="committed")
    received(index, "1.2", stage="seal")
    index.park(received(index, "1.3", stage="put"), "put: StoreUnavailable: down")
    index.close()
    report = status_report(url)
    assert report["stages"]["committed"] == 1 and report["pending"] == 1  # parked: not pending
    assert [p["stage"] for p in report["parked"]] == ["put"]
    assert postgres.password not in report["index"] and "127.0.0.1" in report["index"]

    monkeypatch.setenv("GATEWAY_INDEX_URL", url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    assert main(["retry", "--all"]) == 0  # back at put, where it stopped
    assert main(["status", "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out[out.index("{") :])
    assert shown["parked"] == [] and shown["stages"]["put"] == 1
    assert postgres.password not in out + err
    assert main(["backup", str(tmp_path / "index.dump")]) == 0
    assert main(["backup", str(tmp_path / "index.dump")]) == 1  # never overwritten
    out, err = capsys.readouterr()
    assert postgres.password not in out + err and "exists" in err
    copy = Index(pg_restore(postgres, tmp_path / "index.dump"))
    assert sorted(r.stage for r in copy.all()) == ["committed", "put", "seal"]
    copy.close()


def restart(postgres: PostgresCluster) -> None:
    """Restart the session's server (fast: every session is cut), on its own data dir."""
    postgres._run(
        [str(BIN / "pg_ctl"), "-D", str(postgres.data), "-l", str(postgres.root / "server.log"),
         "-m", "fast", "-w", "restart"]
    )  # fmt: skip


def test_a_restarted_server_is_reconnected_to_and_the_statement_caught_by_it_fails(
    postgres: PostgresCluster,
) -> None:
    url = postgres.create_database()
    index = Index(url)
    before = received(index, "1.1")
    restart(postgres)
    with pytest.raises(DATABASE_ERRORS):  # the C-STORE that met the restart: refused, not acked
        received(index, "1.2")
    after = received(index, "1.3")
    # a read on the pipeline's session, also cut by the restart, is run again on a new one
    assert [(r.id, r.sop_instance_uid) for r in index.all()] == [(before, "1.1"), (after, "1.3")]
    # and so is a transaction's BEGIN (nothing ran yet): the pipeline's next step goes through
    restart(postgres)
    index.update(after, stage="seal")
    assert index.get(after).stage == "seal"
    index.close()


def test_two_connections_never_put_one_row_in_two_open_batches(postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    indexes = [Index(url), Index(url)]
    rows = [received(indexes[0], f"1.{i}", stage="anchor") for i in range(20)]
    start = threading.Barrier(len(indexes))
    opened: list[tuple[int, ...]] = []

    def batch(n: int, index: Index) -> None:
        start.wait()
        for i, row_id in enumerate(rows):
            with contextlib.suppress(ValueError):  # in an open batch: the other session won
                opened.append(index.open_batch(root=bytes([n, i]) * 16, members=[row_id]).members)

    threads = [threading.Thread(target=batch, args=(n, ix)) for n, ix in enumerate(indexes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(opened) == [(row_id,) for row_id in rows]
    assert len(indexes[1].open_batches(due_only=False)) == len(rows)
    for index in indexes:
        index.close()


# --- claims and wake-ups: claimers pass each other, workers hear NOTIFY ----------------------


class TestPostgresClaims(ClaimsContract):
    @pytest.fixture
    def location(self, postgres: PostgresCluster) -> str:
        return postgres.create_database()


def _impatient(url: str) -> str:
    """``url`` for a session whose every lock wait fails after 10 s (so a claim that queued
    behind another's locks fails the test instead of hanging it)."""
    return f"{url}?options=-c%20lock_timeout%3D10s"


def test_a_claimer_passes_the_rows_another_claimer_is_taking(postgres: PostgresCluster) -> None:
    """While one claimer's transaction holds rows (its SELECT ... FOR UPDATE SKIP LOCKED has
    run, its commit has not), another claims the rest at once instead of queueing."""
    url = postgres.create_database()
    holder, claimer = Index(url), Index(_impatient(url))
    pooled = [received(holder, f"1.{n}") for n in range(4)]
    anchor = [received(holder, f"2.{n}", stage="anchor") for n in range(4)]
    with holder.transaction() as db:
        db.execute(
            "SELECT id FROM instances WHERE id IN (?, ?, ?, ?) FOR UPDATE",
            (*pooled[:2], *anchor[:2]),
        )
        taken = claimer.claim_due("w2", stages=POOLED, limit=10, lease_s=30)
        assert [r.id for r in taken] == pooled[2:]
        cut = claimer.claim_unbatched("w2", "anchor", limit=10, lease_s=30)
        assert [r.id for r in cut] == anchor[2:]
    assert [r.id for r in claimer.claim_due("w2", stages=POOLED, limit=10, lease_s=30)] == [
        *pooled[:2]
    ]  # the holder took no claim: free once its transaction ended
    holder.close()
    claimer.close()


def test_a_batch_another_claimer_is_taking_is_refused_at_once_then_claimed(
    postgres: PostgresCluster,
) -> None:
    url = postgres.create_database()
    holder, claimer = Index(url), Index(_impatient(url))
    members = [received(holder, f"1.{n}", stage="anchor") for n in range(3)]
    batch = holder.open_batch(root=b"b" * 32, members=members)
    with holder.transaction() as db:
        db.execute("SELECT id FROM instances WHERE id = ? FOR UPDATE", (members[-1],))
        assert not claimer.claim_batch("w2", batch.id, lease_s=30)  # NOWAIT: no queueing
        assert claimer.claim_counts() == {}  # all or nothing: no member claimed
    assert claimer.claim_batch("w2", batch.id, lease_s=30)
    assert claimer.claim_counts() == {"w2": 3}
    holder.close()
    claimer.close()


BELL_PROCESS = """
import sys, threading
from pathlib import Path
from gateway.ingest.wakeup import NotifyBell
rang = threading.Event()
bell = NotifyBell(sys.argv[1], rang.set, ready=Path(sys.argv[2]))
ok = rang.wait(120)
bell.close()
print("rang" if ok else "silent", flush=True)
"""


def test_a_notify_wakes_a_bell_in_another_process(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    """A worker's bell in its own process, on its own session, wakes on the listener's
    NOTIFY (what wakes workers on other machines: nothing but the index's server is shared)."""
    url = postgres.create_database()
    ready = tmp_path / "worker-w1.listening"
    proc = subprocess.Popen(
        [sys.executable, "-c", BELL_PROCESS, url, str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    doorbell = NotifyDoorbell(url)
    try:
        while not ready.exists() and proc.poll() is None:
            time.sleep(0.05)
        doorbell.ring()
        out, err = proc.communicate(timeout=180)
    finally:
        doorbell.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "rang", err[-2000:]
    assert doorbell.sent >= 1
    assert not ready.exists()  # a closed bell is not shown as listening


def _terminate(url: str, query: str) -> int:
    """End the server sessions whose latest statement was ``query``; how many."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s"
            " AND pid != pg_backend_pid()",
            (query,),
        ).fetchall()
    return len(rows)


def test_bell_and_doorbell_outlive_their_sessions_being_cut(postgres: PostgresCluster) -> None:
    """A server restart (here: its sessions ended) costs no wake-up: the bell listens again
    and rings once for what it may have missed; the doorbell sends its ring on a new session."""
    url = postgres.create_database()
    rings: list[float] = []
    rang = threading.Condition()

    def on_ring() -> None:
        with rang:
            rings.append(time.monotonic())
            rang.notify_all()

    def wait_rings(count: int) -> None:
        with rang:
            assert rang.wait_for(lambda: len(rings) >= count, timeout=120), rings

    bell = NotifyBell(url, on_ring)
    doorbell = NotifyDoorbell(url)
    try:
        assert bell.listening.wait(60)
        doorbell.ring()
        wait_rings(1)
        assert _terminate(url, f"LISTEN {CHANNEL}") == 1
        wait_rings(2)  # listening again: one ring for what went unheard
        assert _terminate(url, f"NOTIFY {CHANNEL}") == 1  # the doorbell's session
        doorbell.ring()
        wait_rings(3)
    finally:
        doorbell.close()
        bell.close()
