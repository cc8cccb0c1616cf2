"""A modality's side of Storage Commitment (DCMTK has none): a pynetdicom SCU sending
N-ACTION, and an SCP of its own on a free port for reports on a new association.

With ``ssl_context`` the modality's SCP listens for DICOM TLS only, and ``request(...,
tls_args=...)`` asks over TLS."""

from __future__ import annotations

import queue
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from gateway.ingest.commitment import STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
from gateway.procs import free_port


@dataclass(frozen=True)
class Received:
    """One N-EVENT-REPORT as the modality saw it."""

    how: str  # "same" association as the N-ACTION, or a "new" one the gateway opened
    event_type: int
    info: Dataset
    calling_aet: str
    client_cert_cn: str | None = None  # the certificate the sender presented over TLS

    @property
    def committed(self) -> set[str]:
        return {str(i.ReferencedSOPInstanceUID) for i in self.info.get("ReferencedSOPSequence", [])}

    @property
    def failed(self) -> dict[str, int]:
        return {
            str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
            for i in self.info.get("FailedSOPSequence", [])
        }


class Modality:
    """``with Modality("CT1") as ct: ct.request(port, refs)``; reports land in ``reports``."""

    def __init__(
        self,
        ae_title: str = "MODALITY",
        *,
        scp_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.scp_port = scp_port or free_port()
        self.ssl_context = ssl_context
        self.reports: queue.Queue[Received] = queue.Queue()
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Modality:
        self.start_scp()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_scp()

    def start_scp(self) -> None:
        ae = AE(ae_title=self.ae_title)
        # the gateway proposes the SCP role for itself (PS3.4 J.3.3): accept it
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        self._server = ae.start_server(
            ("127.0.0.1", self.scp_port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report, ["new"])],
            ssl_context=self.ssl_context,
        )

    def stop_scp(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report(self, event: Any, how: str) -> tuple[int, None]:
        self.reports.put(
            Received(
                how=how,
                event_type=int(event.event_type),
                info=event.event_information,
                calling_aet=str(event.assoc.requestor.ae_title).strip(),
                client_cert_cn=_peer_cn(event.assoc),
            )
        )
        return 0x0000, None

    def request(
        self,
        port: int,
        refs: list[tuple[str, str]],
        *,
        transaction_uid: str | None = None,
        release_at_once: bool = False,
        wait: float = 120.0,
        called: str = "XRAYGW",
        tls_args: tuple[ssl.SSLContext, str] | None = None,
    ) -> tuple[int, Received | None]:
        """Send N-ACTION (Request Storage Commitment) for ``(class, instance)`` pairs.

        Returns the N-ACTION status and, unless ``release_at_once``, the report received
        on this association (None if none arrived within ``wait``).
        """
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT)
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 60
        # The report's handler returns before pynetdicom sends our N-EVENT-REPORT response;
        # releasing in between is a P-DATA after A-RELEASE-RQ (Evt9 in Sta7), so the
        # release waits until that response is out.
        answered = threading.Event()

        def on_sent(event: Any) -> None:
            if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
                answered.set()

        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title=called,
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, self._on_report, ["same"]),
                (evt.EVT_DIMSE_SENT, on_sent),
            ],
            tls_args=tls_args,
        )
        assert assoc.is_established, "the gateway refused the association"
        try:
            info = Dataset()
            info.TransactionUID = transaction_uid or generate_uid()
            items = []
            for sop_class, sop_instance in refs:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                items.append(item)
            info.ReferencedSOPSequence = items
            status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
            code = int(status.Status) if "Status" in status else -1
            if release_at_once or code != 0:
                return code, None
            try:
                report = self.reports.get(timeout=wait)
            except queue.Empty:
                return code, None
            if report.how == "same":
                answered.wait(10)
            return code, report
        finally:
            if assoc.is_established:
                assoc.release()

    def next_report(self, *, timeout: float = 120.0) -> Received:
        return self.reports.get(timeout=timeout)


def _peer_cn(assoc: Any) -> str | None:
    """The common name in the peer's certificate, if the association is TLS with one."""
    sock = assoc.dul.socket.socket
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None
