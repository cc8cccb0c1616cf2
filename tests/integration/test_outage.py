"""Outages of every downstream during a 200-instance storescu run, with the real parts.

The test owns the S3 server (moto, behind a relay it cuts), the chain (anvil, stopped by
pid with SIGTERM so that its state is dumped, restarted on the same port from that
state) and the PACS (Orthanc, stopped by pid, restarted on the same ports and storage).
The gateway is `xray-gateway up` pointed at all three. While a downstream is down the
listener keeps acking; when it is back the backlog drains by itself. Then every acked
instance is checked: one row, one sealed object, one ledger record, one Orthanc copy
with the received bytes. A permanent failure (the recorder's role revoked) parks the
rows visibly until `xray-gateway retry` re-queues them.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import generate_uid

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.ingest.commitment import PROCESSING_FAILURE
from gateway.ledger import XrayLedger
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.pacs.client import Pacs
from gateway.procs import free_port
from gateway.store import ObjectStore, open_store
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.ledger_records import records_of
from tests.integration.modality import Modality, Received
from tests.integration.pacs import TestOrthanc
from tests.integration.s3 import MotoServer, Relay

ACCESS, SECRET = "xray-outage-access", "xray-outage-secret-0123456789"
BUCKET = "xray-originals"
COUNT = 200
DOWN_S = 15.0  # how long each downstream stays away (storescu keeps sending meanwhile)
UID_PREFIX = "1.2.826.0.1.3680043.10.1041."
FIGURES: dict[str, dict[str, float]] = {}


@dataclass
class Site:
    up: Up
    anvil: Anvil
    moto: MotoServer
    relay: Relay
    orthanc: TestOrthanc
    direct_store: ObjectStore  # moto without the relay: what is really stored
    ledger: XrayLedger
    pacs: Pacs
    modality: Modality
    recorder: str
    tmp: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("outage")
    var = tmp / "var"
    anvil = Anvil(state_dir=tmp / "anvil", port=free_port())
    moto = MotoServer(log_dir=tmp / "moto")
    orthanc = TestOrthanc(data_dir=tmp / "orthanc")
    relay = Relay(("127.0.0.1", moto.port))
    modality = Modality("CT1")
    up: Up | None = None
    try:
        anvil.start()
        moto.start()
        relay.start()
        orthanc.start()
        modality.start_scp()
        # An external chain: the operator funds the gateway's accounts and deploys once.
        admin = load_or_create_account(var / "keys" / "admin.key")
        recorder = load_or_create_account(var / "keys" / "recorder.key")
        for account in (admin, recorder):
            anvil.fund(account.address)
        user, password = orthanc.orthanc.credentials  # an external PACS's login, in its URL
        orthanc_url = orthanc.orthanc.url.replace("http://", f"http://{user}:{password}@")
        env = gateway_env(
            var,
            GATEWAY_CHAIN_URL=anvil.url,
            GATEWAY_ORTHANC_URL=orthanc_url,
            GATEWAY_STORE_URL=f"s3://{relay.endpoint}/{BUCKET}",
            GATEWAY_S3_ACCESS_KEY=ACCESS,
            GATEWAY_S3_SECRET_KEY=SECRET,
            GATEWAY_COMMITMENT_PEERS=f"CT1=127.0.0.1:{modality.scp_port}",
        )
        deployed = run(env, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        up = Up(env)
        yield Site(
            up=up,
            anvil=anvil,
            moto=moto,
            relay=relay,
            orthanc=orthanc,
            direct_store=open_store(
                f"s3://{moto.endpoint}/{BUCKET}", access_key=ACCESS, secret_key=SECRET
            ),
            ledger=XrayLedger.at(anvil.url, up.value("xray contract")),
            pacs=orthanc.pacs,
            modality=modality,
            recorder=recorder.address,
            tmp=tmp,
        )
    finally:
        try:
            if up is not None:
                assert up.stop() == 0
        finally:
            modality.stop_scp()
            orthanc.stop()
            relay.stop()
            moto.stop()
            anvil.stop()
        if FIGURES:
            print("\noutage figures:", json.dumps(FIGURES, indent=1))


def series(site: Site, name: str, number: int, count: int = COUNT) -> list[Path]:
    """A CT series of small slices with UIDs of its own."""
    return dicom_fixtures.ct_series(
        site.tmp / name,
        count,
        rows=64,
        cols=64,
        study_uid=f"{UID_PREFIX}{number}.0",
        prefix=f"{UID_PREFIX}{number}.1.",
    )


def uids_of(files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


class Sender:
    """storescu in a thread, verbose so that every acknowledged C-STORE can be counted."""

    def __init__(self, port: int, files: list[Path]) -> None:
        self.output = ""
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, args=(port, files), daemon=True)
        self._thread.start()

    def _run(self, port: int, files: list[Path]) -> None:
        result = storescu(port, files, aet="CT1", extra=("-v",))
        self.output, self.code = result.stdout, result.returncode

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "storescu did not finish"

    @property
    def acked(self) -> int:
        return len(re.findall(r"Received Store Response \(Success\)", self.output))


def mine(site: Site, uids: list[str]) -> list[dict[str, Any]]:
    wanted = set(uids)
    return [dict(r) for r in site.up.rows() if r["sop_instance_uid"] in wanted]


def wait_for(what: str, check: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"bounded wait ran out: {what}")


def wait_committed(site: Site, uids: list[str], *, timeout: float = 900) -> float:
    """Wait until every row of ``uids`` is committed; returns when that was (monotonic).

    A row parked at stage ``failed`` during an outage is a bug: fail at once, with it.
    """
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = mine(site, uids)
        parked = [
            (r["id"], r["parked_stage"], r["last_error"]) for r in rows if r["stage"] == "failed"
        ]
        assert not parked, f"rows parked during a transient outage: {parked[:5]}"
        if len(rows) >= len(uids) and all(r["stage"] == "committed" for r in rows):
            return time.monotonic()
        time.sleep(0.2)
    stuck = [(r["id"], r["stage"], r["last_error"]) for r in rows if r["stage"] != "committed"]
    raise AssertionError(f"{len(rows)}/{len(uids)} rows, not committed: {stuck[:10]}")


def status(site: Site) -> dict[str, Any]:
    result = run(site.up.env, "status", "--json", "--limit", "500")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def failing_with(site: Site, stage: str, error: str) -> bool:
    failing = status(site)["failing"]
    assert isinstance(failing, list)
    return any(f["stage"] == stage and f"{error}:" in (f["last_error"] or "") for f in failing)


def metrics(site: Site) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{site.up.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def check_everything(site: Site, files: list[Path], uids: list[str]) -> tuple[int, int]:
    """(lost, duplicated) among ``uids``: each must have one row, one object, one record, one
    Orthanc copy, all with the bytes the gateway received. What is wrong is printed."""
    rows = mine(site, uids)
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_uid.setdefault(str(row["sop_instance_uid"]), []).append(row)
    lost = duplicated = 0
    problems: list[str] = []
    for path, uid in zip(files, uids, strict=True):
        found = by_uid.get(uid, [])
        if len(found) != 1 or found[0]["stage"] != "committed":
            lost += not found or all(r["stage"] != "committed" for r in found)
            duplicated += len(found) > 1
            problems.append(f"{path.name}: rows {[(r['id'], r['stage']) for r in found]}")
            continue
        row = found[0]
        record_key, digest = bytes(row["record_key"]), bytes(row["digest"])
        objects = list(site.direct_store.names(record_key.hex() + "/"))
        image = site.ledger.image_of(record_key)
        records = records_of(site.up.data_dir / "index.sqlite", site.ledger, uid, record_key)
        orthanc_id = site.pacs.find(uid)
        wrong = []
        if objects != [f"{record_key.hex()}/{digest.hex()}"]:
            wrong.append(f"objects {len(objects)}")
        if records == 0:
            wrong.append("ledger: no record")
        elif image is not None and image.current.digest != digest:
            wrong.append("ledger: other digest")
        if orthanc_id is None or orthanc_id != row["orthanc_id"]:
            wrong.append(f"orthanc id {orthanc_id} vs row {row['orthanc_id']}")
        elif fingerprint_bytes(site.pacs.file(orthanc_id)).digest != digest:
            wrong.append("orthanc copy differs")
        assert fingerprint_bytes(path.read_bytes()).pixel_digest == bytes(row["pixel_digest"])
        if wrong:
            problems.append(f"{path.name} row {row['id']} tx {row['tx_hash']}: {', '.join(wrong)}")
        lost += bool(wrong)
        duplicated += len(objects) > 1 or records > 1
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems[:20]))
    return lost, duplicated


def commitment(site: Site, refs: list[tuple[str, str]]) -> Received:
    """Ask for Storage Commitment; the report of *this* request (one for an earlier request
    may still come, later, on a new association)."""
    transaction = generate_uid()
    code, report = site.modality.request(site.up.dicom_port, refs, transaction_uid=transaction)
    assert code == 0x0000
    deadline = time.monotonic() + 180
    while report is None or str(report.info.TransactionUID) != transaction:
        report = site.modality.next_report(timeout=max(1.0, deadline - time.monotonic()))
    return report


def outage(
    site: Site,
    *,
    name: str,
    number: int,
    cut: Callable[[], None],
    restore: Callable[[], None],
    stage: str,
    error: str,
) -> None:
    files = series(site, name, number)
    uids = uids_of(files)
    before = len(site.up.rows())
    sender = Sender(site.up.dicom_port, files)
    wait_for("the run under way", lambda: len(site.up.rows()) >= before + 30, timeout=300)
    cut()
    down_at = time.monotonic()
    # the outage is real: rows fail at the stage that needs the missing downstream
    wait_for(f"{stage} failing with {error}", lambda: failing_with(site, stage, error), timeout=120)
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
    received_while_down = len(site.up.rows()) - before
    restore()
    back_at = time.monotonic()
    sender.join(600)
    done_at = wait_committed(site, uids)
    lost, duplicated = check_everything(site, files, uids)
    figures = {
        "sent": len(files),
        "acked": sender.acked,
        "received_before_restore": received_while_down,
        "committed": sum(r["stage"] == "committed" for r in mine(site, uids)),
        "lost": lost,
        "duplicated": duplicated,
        "down_s": round(back_at - down_at, 1),
        "drain_s": round(done_at - back_at, 1),
    }
    FIGURES[name] = figures
    print(f"\n{name}: {json.dumps(figures)}")
    assert sender.code == 0, sender.output[-2000:]
    assert figures["acked"] == COUNT, sender.output[-2000:]
    assert (lost, duplicated) == (0, 0)
    assert figures["committed"] == COUNT


def test_a_permanent_failure_parks_rows_until_the_operator_retries(site: Site) -> None:
    files = series(site, "revoked", 4, count=3)
    uids = uids_of(files)
    refs = [
        (str(dcmread(p, stop_before_pixels=True).SOPClassUID), u)
        for p, u in zip(files, uids, strict=True)
    ]
    env = site.up.env
    revoked = run(env, "contract", "revoke", site.recorder)
    assert revoked.returncode == 0, revoked.stderr
    try:
        result = storescu(site.up.dicom_port, files, aet="CT1")
        assert result.returncode == 0, result.stdout[-2000:]

        # each row is tried a bounded number of times, then parked where it stopped
        def parked() -> bool:
            rows = mine(site, uids)
            return len(rows) == len(uids) and all(r["stage"] == "failed" for r in rows)

        wait_for("the rows parked at stage failed", parked, timeout=300)
    finally:
        granted = run(env, "contract", "grant", site.recorder, "--role", "recorder",
                      "--name", "xray-gateway")  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    rows = mine(site, uids)
    assert {r["parked_stage"] for r in rows} == {"anchor"}
    assert all("AccessControlUnauthorizedAccount" in str(r["last_error"]) or
               "XrayNotRecorder" in str(r["last_error"]) for r in rows), rows  # fmt: skip
    for row in rows:  # the acked bytes are kept
        assert (site.up.data_dir / "spool" / "ready" / f"{row['entry_id']}.dcm").is_file()

    # a granted role alone changes nothing: the rows stay parked, they are not retried
    time.sleep(3)
    assert all(r["stage"] == "failed" for r in mine(site, uids))
    report = status(site)
    assert report["stages"]["failed"] == len(uids)
    shown = {p["row"]: p for p in report["parked"]}
    assert set(shown) == {r["id"] for r in rows}
    assert all(p["stage"] == "anchor" and p["attempts"] >= 5 for p in shown.values())
    table = run(env, "status")
    assert "parked at stage failed" in table.stdout and "retry" in table.stdout
    values = metrics(site)
    parked_metric = {k: v for k, v in values.items() if k[0] == "xray_gateway_parked_instances"}
    assert sum(parked_metric.values()) == len(uids), parked_metric
    assert all(dict(k[1])["stage"] == "anchor" for k in parked_metric)
    assert values[("xray_gateway_instances", (("stage", "failed"),))] == len(uids)
    log = (site.up.data_dir.parent / "up.log").read_text()
    assert re.search(
        r"ERROR gateway\.ingest\.pipeline: (row|anchor: batch) \d+\b.*parked at stage failed", log
    )

    # Storage Commitment tells the modality these failed
    answer = commitment(site, refs)
    assert answer.failed == {uid: PROCESSING_FAILURE for uid in uids}

    # the operator re-queues them; they commit with no further step
    first = run(env, "retry", str(rows[0]["id"]))
    assert first.returncode == 0 and "re-queued 1 row" in first.stdout, first.stderr
    rest = run(env, "retry", "--all")
    assert rest.returncode == 0 and f"re-queued {len(uids) - 1} row" in rest.stdout, rest.stderr
    assert run(env, "retry", str(rows[0]["id"])).returncode == 1  # no longer parked
    wait_committed(site, uids, timeout=300)
    lost, duplicated = check_everything(site, files, uids)
    assert (lost, duplicated) == (0, 0)
    values = metrics(site)
    assert not [k for k in values if k[0] == "xray_gateway_parked_instances"]
    answer = commitment(site, refs)
    assert answer.event_type == 1 and answer.committed == set(uids)


def test_an_s3_outage_only_delays_commitment(site: Site) -> None:
    outage(
        site,
        name="s3",
        number=1,
        cut=site.relay.stop,
        restore=site.relay.start,
        stage="put",
        error="StoreUnavailable",
    )


def test_an_anvil_outage_only_delays_commitment(site: Site) -> None:
    def restart() -> None:
        assert site.anvil.process is not None
        site.anvil.start()  # same port, the state it dumped on SIGTERM

    height = site.ledger.w3.eth.block_number
    outage(
        site,
        name="anvil",
        number=2,
        cut=site.anvil.stop,  # SIGTERM to its pid: the state is dumped
        restore=restart,
        stage="anchor",
        error="ChainUnavailable",
    )
    assert site.ledger.w3.eth.block_number > height  # the chain went on from its state


def test_an_orthanc_outage_only_delays_commitment(site: Site) -> None:
    outage(
        site,
        name="orthanc",
        number=3,
        cut=site.orthanc.orthanc.stop,  # SIGTERM to its pid; storage and ports kept
        restore=site.orthanc.orthanc.start,
        stage="forward",
        error="PacsUnavailable",
    )
