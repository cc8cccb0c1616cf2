"""A full spool disk: 0xA700, never a partial ack, and recovery once room returns.

The spool is a real 8 MiB tmpfs mount (the tests run as root). The listener alone shows
both ways a reception stops: the reserve check before each MiB, and ENOSPC itself. On
the stack `up` starts, Orthanc is paused (SIGSTOP) so that acked instances stay in the
spool; storescu fills it until 0xA700, Orthanc resumes, the pipeline drains the spool,
and the refused instances go through on a second try.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.index.db import Index
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.procs import free_port
from tests.integration.dicom import DCMTK, dcmsend_status, storescu
from tests.integration.gateway_proc import Up, gateway_env

TMPFS_MB = 8
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, f"cannot mount a tmpfs (run the tests as root): {result.stderr}"
    try:
        yield mount
    finally:
        for _ in range(20):  # a child that still has a file open makes umount busy
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance larger than the whole small disk."""
    path = tmp_path_factory.mktemp("big") / "big.dcm"
    return dicom_fixtures.large_multiframe(path, 12 << 20, rows=512, cols=512)


def statuses(output: str) -> list[str]:
    """The status of each store in storescu -v output, in order (stdout holds stderr too)."""
    return re.findall(r"Received Store Response \(([^)]*)\)", output)


@pytest.mark.parametrize(
    ("reserve", "reason"),
    [
        (1 << 20, "reserve"),  # the check before each MiB stops it
        (-(1 << 40), "No space left on device"),  # no reserve at all: ENOSPC stops it
    ],
)
def test_an_instance_that_does_not_fit_is_refused_and_leaves_nothing(
    small_disk: Path, big_file: Path, reserve: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(small_disk / "spool", reserve_bytes=reserve)
    index = Index(small_disk.parent / "index.sqlite")
    receiver = Receiver(spool=spool, index=index)
    receiver.start(port=free_port())
    free_before = spool.free_bytes()
    try:
        assert dcmsend_status(receiver.port, big_file) == OUT_OF_RESOURCES
        assert reason in caplog.text
        assert index.all() == []
        assert list(spool.incoming.iterdir()) == [] and list(spool.ready.iterdir()) == []
        assert spool.free_bytes() == free_before
        # the listener is still there, and takes what fits
        small = dicom_fixtures.ct_series(small_disk.parent / "ct", 2, rows=256, cols=256)
        result = storescu(receiver.port, small)
        assert result.returncode == 0, result.stdout[-2000:]
        assert len(index.all()) == 2
        assert receiver.responses == {OUT_OF_RESOURCES: 1, 0x0000: 2}
    finally:
        receiver.stop()
        index.close()


def test_an_association_aborted_mid_dataset_leaves_no_partial_file(
    small_disk: Path, tmp_path: Path
) -> None:
    spool = Spool(small_disk / "spool", reserve_bytes=0)
    index = Index(tmp_path / "index.sqlite")
    receiver = Receiver(spool=spool, index=index)
    receiver.start(port=free_port())
    big = dicom_fixtures.large_multiframe(tmp_path / "six.dcm", 6 << 20, rows=512, cols=512)
    try:
        # storescu killed while its dataset is on the wire: the connection drops mid-transfer.
        # It sends through a relay that passes only the first 2 MiB, so the transfer cannot
        # finish before the kill however fast this machine is.
        with _Cutoff(("127.0.0.1", receiver.port), limit=2 << 20) as cutoff:
            sender = subprocess.Popen(
                [str(DCMTK / "storescu"), "--max-send-pdu", "4096", "-aec", "XRAYGW",
                 "127.0.0.1", str(cutoff.port), str(big)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                partial = [p for p in spool.incoming.iterdir() if p.stat().st_size > 1 << 20]
                if partial or sender.poll() is not None:
                    break
                time.sleep(0.01)
            assert partial, "no partial reception showed up in the spool"
            sender.kill()
            sender.wait(30)
        deadline = time.monotonic() + 60
        while list(spool.incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(spool.incoming.iterdir()) == []
        assert index.all() == []
    finally:
        receiver.stop()
        index.close()


class _Cutoff:
    """A one-connection TCP relay that forwards only the first ``limit`` bytes upstream.

    Leaving the ``with`` block closes both sides: the receiver sees the connection drop.
    """

    def __init__(self, target: tuple[str, int], *, limit: int) -> None:
        self.target, self.limit = target, limit
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _Cutoff:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(10)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self._listener.accept()
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
            self._pump(client, upstream, self.limit)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while limit is None or sent < limit:
                data = source.recv(65536 if limit is None else min(65536, limit - sent))
                if not data:
                    return
                sink.sendall(data)
                sent += len(data)


def _descendant(pid: int, name: str) -> int:
    """The pid of the child of ``pid`` whose command is ``name`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm == name:
            return int(entry.name)
    raise AssertionError(f"no child {name} of {pid}")


def test_a_full_spool_refuses_then_recovers_with_every_acked_instance_committed(
    small_disk: Path, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    (data / "spool").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(small_disk), str(data / "spool")], check=True)
    slices = dicom_fixtures.ct_series(tmp_path / "ct", 24)  # 512 KiB each: 12 MiB in all
    up = Up(gateway_env(data, GATEWAY_SPOOL_RESERVE_MB="1"))
    orthanc = _descendant(up.pid, "Orthanc")
    try:
        os.kill(orthanc, signal.SIGSTOP)  # acked instances now wait in the spool
        first = storescu(up.dicom_port, slices, aet="CT1", extra=("-v", "-nh"))
        answers = statuses(first.stdout)
        assert len(answers) == len(slices), first.stdout[-3000:]
        acked = [p for p, a in zip(slices, answers, strict=True) if a == "Success"]
        refused = [p for p, a in zip(slices, answers, strict=True) if a != "Success"]
        assert refused, "the spool never filled up"
        assert acked, "nothing fitted on an empty spool"
        assert all(a == "Refused: OutOfResources" for a in answers if a != "Success"), answers
        assert len(up.rows()) == len(acked)
        assert list((data / "spool" / "incoming").iterdir()) == []

        os.kill(orthanc, signal.SIGCONT)
        resumed = time.monotonic()
        up.wait_done(len(acked), timeout=300)
        drained = time.monotonic() - resumed
        assert list((data / "spool" / "ready").iterdir()) == []  # the room is back

        second = storescu(up.dicom_port, refused, aet="CT1", extra=("-v", "-nh"))
        assert statuses(second.stdout) == ["Success"] * len(refused)
        rows = up.wait_done(len(slices), timeout=300)
        by_uid = {r["sop_instance_uid"]: r for r in rows}
        assert len(by_uid) == len(rows) == len(slices)  # one row each: nothing twice
        for path in slices:  # every acked instance committed whole
            row = by_uid[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
            assert row["stage"] == "committed"
            assert bytes(row["digest"]) == fingerprint_bytes(path.read_bytes()).digest
        print(
            f"\nspool {TMPFS_MB} MiB, reserve 1 MiB, 24 x 512 KiB slices: {len(acked)} acked, "
            f"{len(refused)} refused with 0xA700; drained {drained:.1f} s after Orthanc resumed; "
            f"{len(refused)} accepted on the second try"
        )
    finally:
        os.kill(orthanc, signal.SIGCONT)
        assert up.stop() == 0
        subprocess.run(["umount", str(data / "spool")], check=False)
