"""Crashes: the gateway's processes SIGKILLed at each point of the ingest path, then restarted.

Each crash test arms one failpoint (``GATEWAY_FAILPOINT``, :mod:`gateway.failpoints`) and
sends a small series with DCMTK's storescu. At a ``receive.*`` point `xray-gateway up`
(the listener) dies by SIGKILL, its children (anvil, Orthanc, the worker processes) stop
by themselves, and the test restarts it without the failpoint on the same data dir and
the same ports. At a ``pipeline.*`` point the worker process that passed it dies; `up`
lives on and starts it again under the same id, without the failpoint. Once the backlog has drained, every instance
storescu saw acked is ``intact`` (verify API), with exactly one object in the store,
exactly one ledger record and a copy in Orthanc; an instance never acked is either
absent everywhere or complete in the same way.

Also here: the same file sent ten times at once over ten associations is one object
and one record, and records a chain lost (anvil back on an older state) are anchored
again when the pipeline starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core import keys
from gateway.core.keys import load_pseudonym_key
from gateway.ledger import XrayLedger
from gateway.store.fs import FilesystemStore
from tests.integration.dicom import DCMTK
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.ledger_records import records_of
from tests.integration.test_verify import admin_token, api, ledger_admin, pacs

STUDY = "1.2.826.0.1.3680043.10.1138.9.1"


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five small CT slices (64 x 64): one association's worth of a modality's series."""
    return dicom_fixtures.ct_series(
        tmp_path_factory.mktemp("crash-series"), 5, rows=64, cols=64, study_uid=STUDY,
        prefix="1.2.826.0.1.3680043.10.1138.9.2.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 MiB multi-frame instance: its reception spans many chunks."""
    path = tmp_path_factory.mktemp("crash-big") / "big.dcm"
    return dicom_fixtures.large_multiframe(path, 6 << 20, rows=512, cols=512)


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def send(port: int, files: list[Path], *, aet: str = "CT1") -> subprocess.Popen[str]:
    """storescu -v on ``files`` in one association (they share SOP class and syntax)."""
    return subprocess.Popen(
        [str(DCMTK / "storescu"), "-v", "-nh", "-aet", aet, "-aec", "XRAYGW",
         "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def acked(output: str) -> dict[str, str]:
    """File -> the status storescu -v received for it; a file with no response is absent."""
    answers: dict[str, str] = {}
    current: str | None = None
    for line in output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        response = re.search(r"Received Store Response \(([^)]*)\)", line)
        if response and current is not None:
            answers[current] = response.group(1)
            current = None
    return answers


def child_pids(data_dir: Path) -> dict[str, int]:
    """The pids the gateway's pid files name (anvil, Orthanc)."""
    found = {}
    for name, path in (("anvil", data_dir / "chain" / "anvil.pid"),
                       ("orthanc", data_dir / "orthanc" / "orthanc.pid")):  # fmt: skip
        found[name] = int(json.loads(path.read_text())["pid"])
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: dict[str, int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.2)
    assert not [n for n, p in pids.items() if alive(p)], f"children outlived the gateway: {pids}"


@dataclass
class Copies:
    """Where one SOP Instance UID is, on the restarted gateway."""

    status: str  # the verify API's verdict, or "absent" (404: the gateway never had it)
    objects: int  # objects in the store under its record key
    records: int  # ImageRecorded + ImageSuperseded events, + batches on chain holding it
    in_pacs: bool


def copies(up: Up, client: httpx.Client, ledger: XrayLedger, uid: str) -> Copies:
    record_key = keys.record_key(load_pseudonym_key(up.data_dir / "keys"), uid)
    reply = client.get(f"/v1/instances/{uid}/verify")
    assert reply.status_code in (200, 404), reply.text
    store = FilesystemStore(up.data_dir / "objects")
    return Copies(
        status=reply.json()["status"] if reply.status_code == 200 else "absent",
        objects=len(list(store.names(record_key.hex()))),
        records=records_of(
            up.env.get("GATEWAY_INDEX_URL") or up.data_dir / "index.sqlite", ledger, uid, record_key
        ),
        in_pacs=pacs(up).find(uid) is not None,
    )


def check_after_restart(up: Up, files: list[Path], answers: dict[str, str]) -> dict[str, int]:
    """Every acked file intact, once; every other one absent or intact once. Returns figures."""
    figures = {"sent": len(files), "acked": 0, "committed": 0, "lost": 0, "duplicated": 0}
    ledger = ledger_admin(up)
    with api(up, admin_token(up)) as client:
        for path in files:
            was_acked = answers.get(str(path)) == "Success"
            found = copies(up, client, ledger, uid_of(path))
            deadline = time.monotonic() + 120
            while found.status == "pending" and time.monotonic() < deadline:
                time.sleep(0.2)  # re-anchored, on its way to the PACS: not final yet
                found = copies(up, client, ledger, uid_of(path))
            complete = found == Copies("intact", 1, 1, True)
            figures["acked"] += was_acked
            figures["committed"] += complete
            figures["duplicated"] += found.objects > 1 or found.records > 1
            if was_acked:
                figures["lost"] += not complete
                assert complete, f"acked {path.name}, then: {found}"
            else:
                assert complete or found == Copies("absent", 0, 0, False), (
                    f"never acked {path.name}, left half-done: {found}"
                )
    return figures


@dataclass(frozen=True)
class Crash:
    point: str
    hits: int  # the failpoint fires on this hit
    with_big: bool = False  # a multi-MiB instance in the middle of the series


CRASHES = [
    Crash("receive.chunk", 40, with_big=True),  # partway into the big instance
    Crash("receive.before_ack", 3),  # the third instance is durable, not yet acked
    Crash("pipeline.before_put", 2),
    Crash("pipeline.after_put", 2),
    Crash("pipeline.after_anchor", 1),  # the first batch (or single record) landed
]


@pytest.mark.parametrize("crash", CRASHES, ids=[c.point for c in CRASHES])
def test_a_crash_at_each_point_loses_and_duplicates_nothing(
    crash: Crash, slices: list[Path], big: Path, tmp_path: Path
) -> None:
    files = [*slices[:2], big, *slices[2:]] if crash.with_big else list(slices)
    env = gateway_env(tmp_path / "var")
    up = Up({**env, "GATEWAY_FAILPOINT": f"{crash.point}:{crash.hits}"})
    children = child_pids(up.data_dir)
    state = up.data_dir / "chain" / "anvil-state.json"
    sender = send(up.dicom_port, files)
    output, _ = sender.communicate(timeout=300)
    if crash.point.startswith("pipeline."):  # a worker died; `up` starts it again
        answers = acked(output)
        try:
            up.wait_logged("worker-up-1 exited (code -9): starting it again")
            assert up.proc.poll() is None  # the listener lived on
            up.wait_done(sum(a == "Success" for a in answers.values()), timeout=300)
            figures = check_after_restart(up, files, answers)
        finally:
            assert up.stop() == 0
        print(f"\ncrash at {crash.point}:{crash.hits} (worker): {figures}")
        assert figures["lost"] == 0 and figures["duplicated"] == 0
        assert figures["acked"] == len(files)  # the listener never stopped acking
        return
    assert up.proc.wait(300) == -signal.SIGKILL, "the failpoint never fired"
    up.stop()
    wait_gone(children)  # they got SIGTERM when the gateway died: nothing holds the ports
    assert state.is_file()  # anvil dumped its state on the way out
    answers = acked(output)
    assert all(a == "Success" for a in answers.values()), output[-3000:]
    if crash.point == "receive.chunk":  # it died with a partial reception on disk
        assert [p.stat().st_size for p in (up.data_dir / "spool" / "incoming").iterdir()]
        assert str(big) not in answers

    again = Up(env)  # same data dir, same ports, no failpoint
    try:
        assert not list((again.data_dir / "spool" / "incoming").iterdir())
        again.wait_done(sum(a == "Success" for a in answers.values()), timeout=300)
        figures = check_after_restart(again, files, answers)
    finally:
        assert again.stop() == 0
    print(
        f"\ncrash at {crash.point}:{crash.hits}: "
        + ", ".join(f"{name} {value}" for name, value in figures.items())
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    if crash.point.startswith("pipeline."):
        assert figures["acked"] >= crash.hits  # the pipeline only runs what was acked
    else:
        assert figures["acked"] < len(files)  # the crash cut the series short


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(gateway_env(tmp_path_factory.mktemp("crash-stack") / "var"))
    try:
        yield up
    finally:
        assert up.stop() == 0


def test_the_same_file_ten_times_at_once_is_one_object_and_one_record(
    stack: Up, slices: list[Path]
) -> None:
    path = slices[0]
    senders = [send(stack.dicom_port, [path], aet=f"CT{n}") for n in range(10)]
    outputs = [sender.communicate(timeout=300)[0] for sender in senders]
    assert [acked(out).get(str(path)) for out in outputs] == ["Success"] * 10, outputs[0]
    rows = stack.wait_done(10, timeout=300)
    stages = sorted(r["stage"] for r in rows if r["sop_instance_uid"] == uid_of(path))
    assert stages == ["committed"] + ["duplicate"] * 9
    with api(stack, admin_token(stack)) as client:
        found = copies(stack, client, ledger_admin(stack), uid_of(path))
    assert found == Copies("intact", 1, 1, True)
    print("\nsame file x10 over 10 associations: acked 10, objects 1, records 1")


def test_records_the_chain_lost_are_anchored_again_on_start(
    slices: list[Path], tmp_path: Path
) -> None:
    env = gateway_env(tmp_path / "var")
    state = tmp_path / "var" / "chain" / "anvil-state.json"
    up = Up(env)
    first, second = slices[:2], slices[2:]
    sender = send(up.dicom_port, first)
    assert sender.communicate(timeout=300)[0].count("Received Store Response (Success)") == 2
    up.wait_done(2)
    assert up.stop() == 0
    older = tmp_path / "older-state.json"
    shutil.copy(state, older)  # the chain as it was after the first two
    up = Up(env)
    sender = send(up.dicom_port, second)
    assert sender.communicate(timeout=300)[0].count("Received Store Response (Success)") == 3
    up.wait_done(5)
    assert up.stop() == 0
    shutil.copy(older, state)  # anvil comes back without the last three records

    log = tmp_path / "up.log"
    logged = log.stat().st_size
    again = Up(env)
    try:
        pseudonym_key = load_pseudonym_key(again.data_dir / "keys")
        record_keys = [keys.record_key(pseudonym_key, uid_of(p)) for p in slices]
        ledger = ledger_admin(again)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # re-anchoring runs in the background
            index = again.data_dir / "index.sqlite"
            if all(
                records_of(index, ledger, uid_of(p), key) == 1
                for p, key in zip(slices, record_keys, strict=True)
            ):
                break
            time.sleep(0.2)
        figures = check_after_restart(again, slices, {str(p): "Success" for p in slices})
        # re-anchored, not re-forwarded: their spool copies are gone and Orthanc has them
        assert {row["stage"] for row in again.rows()} == {"committed"}
    finally:
        assert again.stop() == 0
    said = re.findall(
        r"the chain no longer holds (\d+) anchored",
        log.read_bytes()[logged:].decode(errors="replace"),
    )
    assert said == ["3"], said
    assert figures["committed"] == 5 and figures["lost"] == 0 and figures["duplicated"] == 0
    print(
        f"\nchain lost {said[0]} of 5 records: anchored again on start; "
        f"{figures['committed']} intact, duplicated {figures['duplicated']}"
    )
