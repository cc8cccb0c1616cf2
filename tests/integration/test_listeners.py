"""Several listener processes on one DICOM port (``GATEWAY_LISTENERS``).

`up` starts that many ``xray-gateway listener`` processes, each binding the node's DICOM
port with ``SO_REUSEPORT``, and starts one again under its id when it dies. Eight
concurrent DCMTK associations stream a CT series while one listener is SIGKILLed by pid:
every acked instance ends up committed once (one row, one sealed object, one ledger
record, one Orthanc copy), Storage Commitment answers on the association whichever
listener took it, and ``/metrics`` adds up the C-STORE responses of every listener
process, the dead one's included.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

import dicom_fixtures
from tests.integration.gateway_proc import Up, gateway_env
from tests.integration.modality import Modality
from tests.integration.test_crash import acked, check_after_restart, send

STUDY = "1.2.826.0.1.3680043.10.1138.15.1"
ASSOCIATIONS = 8
PER_ASSOCIATION = 25


def cstore_successes(up: Up) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{up.api_port}/metrics", timeout=30) as rsp:
        text = rsp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "xray_gateway_cstore_responses_total"
        and sample.labels == {"status": "0x0000"}
    )


def test_a_listener_killed_mid_stream_of_eight_associations_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    files = dicom_fixtures.ct_series(
        tmp_path / "series", ASSOCIATIONS * PER_ASSOCIATION, rows=64, cols=64,
        study_uid=STUDY, prefix="1.2.826.0.1.3680043.10.1138.15.2.",
    )  # fmt: skip
    chunks = [files[n::ASSOCIATIONS] for n in range(ASSOCIATIONS)]
    with Modality("CT1") as ct1:
        env = gateway_env(
            tmp_path / "var", GATEWAY_LISTENERS="2",
            GATEWAY_COMMITMENT_PEERS=f"CT1=127.0.0.1:{ct1.scp_port}",
        )  # fmt: skip
        up = Up(env)
        try:
            assert up.value("listeners") == "2"
            victim = up.child_pid("listener-listen-1")
            senders = [send(up.dicom_port, chunk) for chunk in chunks]
            deadline = time.monotonic() + 120
            while len(up.rows()) < 40 and time.monotonic() < deadline:
                time.sleep(0.02)
            streaming = sum(sender.poll() is None for sender in senders)
            os.kill(victim, signal.SIGKILL)
            answers: dict[str, str] = {}
            cut_short = 0
            for sender in senders:
                output, _ = sender.communicate(timeout=300)
                answers.update(acked(output))
                cut_short += sender.returncode != 0
            up.wait_logged("listener-listen-1 exited (code -9): starting it again")
            assert up.wait_restarted("listener-listen-1", victim) != victim
            was_acked = [path for path in files if answers.get(str(path)) == "Success"]
            up.wait_done(len(was_acked), timeout=300)
            figures = check_after_restart(up, files, answers)
            responses = cstore_successes(up)
            stored = len(up.rows())
            owners = report_on_the_same_association(up, ct1, was_acked)
        finally:
            assert up.stop() == 0
    print(
        f"\n2 listeners, {ASSOCIATIONS} associations x {PER_ASSOCIATION}, one listener "
        f"SIGKILLed with {streaming} associations streaming ({cut_short} cut short): "
        f"{figures}; /metrics C-STORE successes {responses:.0f} (rows {stored}); "
        f"commitment requests owned by {owners}"
    )
    assert streaming > 0, "the kill came after the stream"
    assert figures["acked"] == len(was_acked) > 0
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["committed"] >= figures["acked"]
    # every listener's count, the killed one's too: at least each ack storescu saw, at most
    # one per stored row (a response counted as the process died may never have arrived)
    assert len(was_acked) <= responses <= stored


def report_on_the_same_association(up: Up, ct1: Modality, files: list[Path]) -> dict[str, int]:
    """Ask for Storage Commitment of ``files`` on four associations (the kernel spreads
    them over the listeners); each is reported committed on its own association. Returns
    how many requests each listener owns."""
    refs = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    for _ in range(4):
        status, report = ct1.request(up.dicom_port, refs)
        assert status == 0x0000
        assert report is not None and report.how == "same"
        assert report.event_type == 1 and report.committed == {uid for _, uid in refs}
    owners: dict[str, int] = {}
    for (owner,) in _commitment_owners(up):
        owners[owner] = owners.get(owner, 0) + 1
    node = up.value("node")
    assert set(owners) <= {f"{node}/listen-1", f"{node}/listen-2"}, owners
    return owners


def _commitment_owners(up: Up) -> list[tuple[str]]:
    db = sqlite3.connect(f"file:{up.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return [(str(owner),) for (owner,) in db.execute("SELECT node FROM commitments")]
    finally:
        db.close()
