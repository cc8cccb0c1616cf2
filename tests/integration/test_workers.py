"""Worker processes: a worker SIGKILLed mid-stream, and the listener killed while workers go on.

The pipeline runs in worker processes that claim rows in the index with a lease
(``gateway.index.db`` claims). A worker killed by SIGKILL is started again by `up` under
the same id, which frees its claims at once; a listener (`up`) killed on its own leaves
a separately started `xray-gateway worker` working what it acked. In both, every acked
instance ends up committed once: one row, one sealed object, one ledger record, one
Orthanc copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import dicom_fixtures
from gateway.core import keys
from gateway.core.keys import load_pseudonym_key
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.procs import free_port
from gateway.store.fs import FilesystemStore
from tests.integration.gateway_proc import EXE, Up, gateway_env, run
from tests.integration.ledger_records import records_of
from tests.integration.pacs import TestOrthanc
from tests.integration.test_crash import acked, check_after_restart, send, uid_of

STUDY = "1.2.826.0.1.3680043.10.1138.14.1"


def series(tmp: Path, count: int, prefix: str) -> list[Path]:
    return dicom_fixtures.ct_series(
        tmp / "series", count, rows=64, cols=64, study_uid=STUDY, prefix=prefix
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, engine: str
) -> None:
    """On PostgreSQL the worker claims with SKIP LOCKED and is woken by NOTIFY; the one
    started again listens anew."""
    files = series(tmp_path, 200, "1.2.826.0.1.3680043.10.1138.14.2.")  # a stream that lasts
    extra = {}
    if engine == "postgresql":
        extra["GATEWAY_INDEX_URL"] = request.getfixturevalue("postgres").create_database()
    up = Up(gateway_env(tmp_path / "var", **extra))
    try:
        worker = up.worker_pid()
        sender = send(up.dicom_port, files)
        # mid-stream: the worker has rows in hand while storescu is still sending
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = up.rows()
            # rows in hand: past fingerprint, or claimed by the worker (acks first may hold
            # it before its first stage while a fast stream lasts)
            if len(rows) >= 30 and any(
                r["stage"] not in ("fingerprint", "committed") or r["claimed_by"] for r in rows
            ):
                break
            time.sleep(0.02)
        streaming = sender.poll() is None
        working = [r["stage"] for r in rows if r["stage"] != "committed"]
        os.kill(worker, signal.SIGKILL)
        output, _ = sender.communicate(timeout=300)
        answers = acked(output)
        up.wait_logged("worker-up-1 exited (code -9): starting it again")
        assert up.wait_restarted("worker-up-1", worker) != worker
        up.wait_done(len(files), timeout=300)
        figures = check_after_restart(up, files, answers)
    finally:
        assert up.stop() == 0
    print(f"\n{engine}: worker SIGKILLed mid-stream ({len(working)} rows at work): {figures}")
    assert streaming and working, "the kill came after the stream or before any work"
    assert figures["acked"] == len(files) == figures["committed"]  # the listener never stopped
    assert figures["lost"] == 0 and figures["duplicated"] == 0


def test_the_listener_killed_while_a_worker_goes_on(tmp_path: Path) -> None:
    """`up` (listener and API, no workers of its own) SIGKILLed mid-stream; a separately
    started `xray-gateway worker` commits everything the listener acked, while it is gone."""
    files = series(tmp_path, 60, "1.2.826.0.1.3680043.10.1138.14.3.")
    var = tmp_path / "var"
    anvil = Anvil(state_dir=tmp_path / "anvil", port=free_port())
    orthanc = TestOrthanc(data_dir=tmp_path / "orthanc")
    worker: subprocess.Popen[str] | None = None
    up: Up | None = None
    try:
        anvil.start()
        orthanc.start()
        for name in ("admin", "recorder"):
            anvil.fund(load_or_create_account(var / "keys" / f"{name}.key").address)
        user, password = orthanc.orthanc.credentials
        env = gateway_env(
            var, GATEWAY_CHAIN_URL=anvil.url, GATEWAY_WORKERS="0",
            GATEWAY_ORTHANC_URL=orthanc.orthanc.url.replace("http://", f"http://{user}:{password}@"),
        )  # fmt: skip
        deployed = run(env, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        up = Up(env)
        with (tmp_path / "worker.log").open("a") as log:
            worker = subprocess.Popen(
                [EXE, "worker", "--id", "ext-1"], env=env, stdout=subprocess.PIPE, stderr=log,
                text=True,
            )  # fmt: skip
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith("xray-gateway worker ext-1 is up")
        sender = send(up.dicom_port, files)
        deadline = time.monotonic() + 120
        while len(up.rows()) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        up.proc.kill()  # the listener, by pid
        assert up.proc.wait(60) == -signal.SIGKILL
        output, _ = sender.communicate(timeout=300)
        answers = acked(output)
        was_acked = {uid_of(Path(f)) for f, a in answers.items() if a == "Success"}
        assert 0 < len(was_acked) < len(files), "the kill came before or after the stream"
        # the worker goes on alone: every row the listener made durable is committed
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = up.rows()
            if rows and all(r["stage"] == "committed" for r in rows):
                break
            assert worker.poll() is None, "the worker died with the listener"
            time.sleep(0.2)
        assert {r["sop_instance_uid"] for r in rows} >= was_acked
        assert all(r["stage"] == "committed" for r in rows), [r["stage"] for r in rows]
        ledger = XrayLedger.at(anvil.url, up.value("xray contract"))
        store = FilesystemStore(var / "objects")
        pseudonym_key = load_pseudonym_key(var / "keys")
        for uid in {r["sop_instance_uid"] for r in rows}:
            record_key = keys.record_key(pseudonym_key, uid)
            assert [r["stage"] for r in rows if r["sop_instance_uid"] == uid] == ["committed"]
            assert len(list(store.names(record_key.hex()))) == 1, uid
            assert records_of(var / "index.sqlite", ledger, uid, record_key) == 1, uid
            assert orthanc.pacs.find(uid) is not None, uid
        print(f"\nlistener SIGKILLed: {len(was_acked)} acked, {len(rows)} committed by the worker")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(120) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(30)
        if worker is not None and worker.stdout is not None:
            worker.stdout.close()
        if up is not None:
            up.stop()
        orthanc.stop()
        anvil.stop()
