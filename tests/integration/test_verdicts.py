"""Verdicts that are always right, with the real parts: pending until committed, never a
false ``missing`` during a PACS outage, ``unconfirmed`` rather than ``intact`` for an
anchor the plugin's ledger mirror cannot confirm, and an alert for what stays pending.

The gateway is `xray-gateway up` pointed at an anvil and an Orthanc this module starts
and stops by pid (as tests/integration/test_outage.py does); instances go in with DCMTK.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core import keys
from gateway.core.fingerprint import fingerprint_bytes
from gateway.core.keys import load_pseudonym_key
from gateway.core.merkle import InclusionProof, encode_proof
from gateway.index.db import Index
from gateway.ledger.accounts import load_or_create_account
from gateway.ledger.anvil import Anvil
from gateway.ledger.client import connect, deploy
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.procs import free_port
from tests.integration.dicom import storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.pacs import TestOrthanc
from tests.integration.plugin_helpers import alerts, integrity, make_study, record, store

pytestmark = pytest.mark.integration

COUNT = 200
DOWN_S = 15.0
PENDING_ALERT_S = 4.0  # small, so that the outage itself trips it
UID_PREFIX = "1.2.826.0.1.3680043.10.1212."
FIGURES: dict[str, Any] = {}


@dataclass
class Site:
    up: Up
    anvil: Anvil
    orthanc: TestOrthanc
    token: str
    tmp: Path

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.up.api_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("verdicts")
    var = tmp / "var"
    anvil = Anvil(state_dir=tmp / "anvil", port=free_port())
    orthanc = TestOrthanc(data_dir=tmp / "orthanc")
    up: Up | None = None
    try:
        anvil.start()
        orthanc.start()
        for name in ("admin", "recorder"):
            anvil.fund(load_or_create_account(var / "keys" / f"{name}.key").address)
        user, password = orthanc.orthanc.credentials
        env = gateway_env(
            var,
            GATEWAY_CHAIN_URL=anvil.url,
            GATEWAY_ORTHANC_URL=orthanc.orthanc.url.replace("http://", f"http://{user}:{password}@"),
            GATEWAY_PENDING_ALERT_S=str(PENDING_ALERT_S),
        )  # fmt: skip
        deployed = run(env, "contract", "deploy")
        assert deployed.returncode == 0, deployed.stderr
        up = Up(env)
        yield Site(up, anvil, orthanc, (var / "api-token").read_text().strip(), tmp)
    finally:
        try:
            if up is not None:
                assert up.stop() == 0
        finally:
            orthanc.stop()
            anvil.stop()
        if FIGURES:
            print("\nverdict figures:", json.dumps(FIGURES))


def series(site: Site, number: int, count: int) -> tuple[list[Path], list[str]]:
    files = dicom_fixtures.ct_series(
        site.tmp / f"series{number}", count, rows=64, cols=64,
        study_uid=f"{UID_PREFIX}{number}.0", prefix=f"{UID_PREFIX}{number}.1.",
    )  # fmt: skip
    return files, [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def stages(site: Site, uids: list[str]) -> dict[str, str]:
    wanted = set(uids)
    return {
        str(r["sop_instance_uid"]): str(r["stage"])
        for r in site.up.rows()
        if r["sop_instance_uid"] in wanted
    }


def wait_for(what: str, check: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"bounded wait ran out: {what}")


def metric(site: Site, name: str) -> float:
    url = f"http://127.0.0.1:{site.up.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_an_image_waiting_for_a_stopped_pacs_is_pending_and_alerted_not_missing(
    site: Site,
) -> None:
    files, uids = series(site, 1, 3)
    site.orthanc.orthanc.stop()  # by pid; its storage and ports are kept
    try:
        result = storescu(site.up.dicom_port, files, aet="CT1")
        assert result.returncode == 0, result.stdout[-2000:]
        wait_for(
            "every row anchored and waiting at forward",
            lambda: set(stages(site, uids).values()) == {"forward"} and len(stages(site, uids)) == 3,
            timeout=300,
        )  # fmt: skip
        with site.api() as client:
            for uid in uids:
                reply = client.get(f"/v1/instances/{uid}/verify")
                assert reply.status_code == 200, reply.text  # today: 503, or "missing"
                verdict = reply.json()
                assert (verdict["status"], verdict["stage"]) == ("pending", "forward"), verdict
                assert verdict["copies"]["pacs"] == "unchecked"
                assert any("stage forward" in note for note in verdict["notes"])

            # still waiting after GATEWAY_PENDING_ALERT_S: one alert per row, no UID in it
            def alerted() -> list[dict[str, Any]]:
                found = client.get("/v1/alerts", params={"kind": "pending_too_long"}).json()[
                    "items"
                ]
                return [a for a in found if "at stage forward" in a["detail"]]

            wait_for("pending_too_long alerts", lambda: len(alerted()) >= 3, timeout=120)
            shown = alerted()
            assert all(a["sop_instance_uid"] is None for a in shown)
            assert not any(uid in a["detail"] for a in shown for uid in uids)
            assert metric(site, "xray_gateway_pending_too_long_instances") >= 3
    finally:
        site.orthanc.orthanc.start()
    wait_for("committed", lambda: set(stages(site, uids).values()) == {"committed"}, timeout=300)
    with site.api() as client:
        for uid in uids:
            assert client.get(f"/v1/instances/{uid}/verify").json()["status"] == "intact"
        count = len(client.get("/v1/alerts", params={"kind": "pending_too_long"}).json()["items"])
    time.sleep(PENDING_ALERT_S)  # the watch ticks again: committed rows are not re-alerted
    with site.api() as client:
        again = client.get("/v1/alerts", params={"kind": "pending_too_long"}).json()["items"]
    assert len(again) == count
    assert metric(site, "xray_gateway_pending_too_long_instances") == 0


class Poller:
    """Asks the verify API about every instance, round after round, in a thread.

    Each answer is judged against the stage its row had *before* the question: a row not
    yet committed must be answered ``pending`` (or ``intact`` if it committed meanwhile),
    never ``missing``; the API may answer 503 only while the PACS is down.
    """

    def __init__(self, site: Site, uids: list[str], pacs_down: threading.Event) -> None:
        self.site, self.uids, self.pacs_down = site, uids, pacs_down
        self.answers: dict[str, int] = {}
        self.wrong: list[str] = []
        self.rounds = 0
        self.pending_while_down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(300)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        with self.site.api() as client:
            while not self._stop.is_set():
                before = stages(self.site, self.uids)
                for uid in self.uids:
                    if self._stop.is_set():
                        return
                    down = self.pacs_down.is_set()
                    self._ask(client, uid, before.get(uid), down)
                self.rounds += 1

    def _ask(self, client: httpx.Client, uid: str, stage: str | None, down: bool) -> None:
        if stage is None:
            return  # not received yet: nobody has heard of it
        reply = client.get(f"/v1/instances/{uid}/verify")
        if reply.status_code == 503 and (down or self.pacs_down.is_set()):
            # a committed row cannot be judged without the PACS; a pending one can
            key = "503 (PACS down)"
            if stages(self.site, [uid]).get(uid) != "committed":
                self.wrong.append(f"{uid} at {stage}: 503 instead of pending")
        elif reply.status_code != 200:
            key = f"http {reply.status_code}"
            self.wrong.append(f"{uid} at {stage}: {reply.status_code} {reply.text[:200]}")
        else:
            key = reply.json()["status"]
            allowed = {"intact"} if stage == "committed" else {"pending", "intact"}
            if key not in allowed:
                self.wrong.append(f"{uid} at {stage}: {key}")
            if key == "pending" and down:
                self.pending_while_down += 1
        self.answers[key] = self.answers.get(key, 0) + 1


def test_during_a_15_s_pacs_outage_200_instances_are_pending_never_missing_then_intact(
    site: Site,
) -> None:
    files, uids = series(site, 2, COUNT)
    pacs_down = threading.Event()
    sender = threading.Thread(
        target=lambda: storescu(site.up.dicom_port, files, aet="CT1"), daemon=True
    )
    poller = Poller(site, uids, pacs_down)
    try:
        sender.start()
        wait_for("the run under way", lambda: len(stages(site, uids)) >= 30, timeout=300)
        pacs_down.set()
        site.orthanc.orthanc.stop()  # SIGTERM to its pid; storage and ports kept
        down_at = time.monotonic()
        wait_for(
            "rows waiting at forward",
            lambda: "forward" in stages(site, uids).values(), timeout=120,
        )  # fmt: skip
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        site.orthanc.orthanc.start()
        pacs_down.clear()
        back_at = time.monotonic()
        sender.join(600)
        assert not sender.is_alive(), "storescu did not finish"
        wait_for(
            "all committed", lambda: set(stages(site, uids).values()) == {"committed"}
            and len(stages(site, uids)) == COUNT, timeout=900,
        )  # fmt: skip
        drained = time.monotonic() - back_at
        rounds_before = poller.rounds
        wait_for("one more round", lambda: poller.rounds > rounds_before, timeout=600)
    finally:
        pacs_down.clear()
        poller.stop()
        if site.orthanc.orthanc.process is None or site.orthanc.orthanc.process.poll() is not None:
            site.orthanc.orthanc.start()
    FIGURES["outage"] = {
        "instances": COUNT, "down_s": DOWN_S, "drain_s": round(drained, 1),
        "poll_rounds": poller.rounds, "answers": poller.answers,
        "pending_while_down": poller.pending_while_down,
    }  # fmt: skip
    print(f"\noutage: {json.dumps(FIGURES['outage'])}")
    assert poller.wrong == [], poller.wrong[:20]
    assert "missing" not in poller.answers
    assert poller.pending_while_down > 0  # the outage was seen, and answered pending
    with site.api() as client:
        study = client.get(f"/v1/studies/{UID_PREFIX}2.0/verify")
    assert study.status_code == 200, study.text
    summary = study.json()["summary"]
    assert summary["intact"] == COUNT and summary["total"] == COUNT, summary


def test_an_anchor_the_chain_does_not_confirm_is_unconfirmed_with_its_reason(
    site: Site,
) -> None:
    """Index rows claiming a transaction above the chain's head, and a batch the contract
    does not know, for copies Orthanc holds: each verdict says which, never intact."""
    files, uids = series(site, 3, 2)
    pseudonym_key = load_pseudonym_key(site.up.data_dir / "keys")
    head = int(connect(site.anvil.url).eth.block_number)
    store(site.orthanc.orthanc.url, site.orthanc.orthanc.credentials, files)  # around the gateway
    index = Index(site.up.data_dir / "index.sqlite")
    try:
        for n, (path, uid) in enumerate(zip(files, uids, strict=True)):
            fp = fingerprint_bytes(path.read_bytes())
            row = index.add_received(
                entry_id=f"claim-{uid}", sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                calling_aet="CT1", size=path.stat().st_size,
            )  # fmt: skip
            claim: dict[str, Any] = {
                "stage": "committed", "record_key": keys.record_key(pseudonym_key, uid),
                "patient_key": b"\x05" * 32, "digest": fp.digest, "pixel_digest": fp.pixel_digest,
                "version": 1,
            }  # fmt: skip
            if n == 0:
                claim |= {"tx_hash": "0x" + "ab" * 32, "block_number": head + 1_000}
            else:
                proof = InclusionProof(index=0, size=1, path=())
                claim |= {"batch_id": 4_242, "leaf_index": 0, "proof": encode_proof(proof)}
            index.update(row, **claim)
    finally:
        index.close()
    with site.api() as client:
        above, unknown = (client.get(f"/v1/instances/{uid}/verify").json() for uid in uids)
    assert above["status"] == "unconfirmed", above  # today: unregistered
    assert any(f"above the chain's head {head}" in note for note in above["notes"]), above
    assert unknown["status"] == "unconfirmed", unknown
    assert any("batch 4242 is unknown to the contract" in n for n in unknown["notes"]), unknown
    assert above["copies"]["ledger"] == "unconfirmed"


# --- the plugin's ledger mirror ---------------------------------------------------------------


@pytest.fixture
def mirrored_pacs(site: Site, tmp_path: Path) -> Iterator[TestOrthanc]:
    """Orthanc with the integrity plugin, its ledger mirror following a contract on anvil."""
    admin = load_or_create_account(tmp_path / "deployer.key")
    site.anvil.fund(admin.address)
    address, _ = deploy(connect(site.anvil.url), admin)
    server = TestOrthanc(
        data_dir=tmp_path,
        plugin=ENTRY_SCRIPT,
        plugin_config=plugin_section(
            data_dir=tmp_path,
            chain_url=site.anvil.url,
            contract_address=address,
            mirror_interval=0.5,
            pending_alert_s=1.0,
        ),
    )
    with server:
        yield server


def test_the_plugin_never_calls_an_anchor_its_mirror_cannot_confirm_intact(
    site: Site, mirrored_pacs: TestOrthanc, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "study", count=2)
    head = connect(site.anvil.url).eth.block_number
    # the index claims blocks far above the chain's head: the mirror cannot have passed them
    record(tmp_path / "index.sqlite", study.files, block=head + 1_000_000)
    url, auth = mirrored_pacs.orthanc.url, mirrored_pacs.orthanc.credentials
    ids = store(url, auth, study.files)

    def judged() -> dict[str, object]:
        return integrity(url, auth, "instances", ids[0])

    # once the mirror has synced past the chain's head (not past the claimed block), the
    # verdict says so; today it stays intact ("ledger confirmation pending") for ever
    seen: list[dict[str, object]] = []

    def synced() -> bool:
        seen.append(judged())
        return "not synced past block" in str(seen[-1]["explanation"])

    try:
        wait_for("a verdict naming the mirror's block", synced, timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the plugin said {seen[-1]}") from None
    verdict = seen[-1]
    assert (verdict["status"], verdict["served"]) == ("unconfirmed", True), verdict  # today: intact
    assert f"not synced past block {head + 1_000_000}" in str(verdict["explanation"])
    reply = httpx.get(f"{url}/instances/{ids[0]}/file", auth=auth, timeout=60)
    assert reply.status_code == 200  # served with a warning (FailClosed is the plugin part's)

    # still unconfirmed after PendingAlertSeconds (1 s here): alerted
    def alerted() -> bool:
        judged()
        kinds = [row["kind"] for row in alerts(tmp_path, sop_instance_uid=study.sop_uids[0])]
        return "unconfirmed" in kinds

    wait_for("an unconfirmed alert", alerted, timeout=60)
