"""DICOM TLS with DCMTK's own clients: `up` with TLS only and mutual TLS, and the listener.

Every certificate is made in the test (``tests.integration.certs``): the site's CA signs
the gateway's certificate and the modalities'; another CA signs an intruder's.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import dicom_fixtures
from gateway.index.db import Index
from gateway.ingest.receive import Receiver
from gateway.ingest.spool import Spool
from gateway.ingest.tls import server_context
from gateway.procs import free_port
from tests.integration.certs import Authority, Identity, authority
from tests.integration.dicom import echoscu, storescu
from tests.integration.gateway_proc import Up, gateway_env, run
from tests.integration.modality import Modality


@dataclass
class Pki:
    ca: Authority
    gateway: Identity
    ct1: Identity
    intruder: Identity  # signed by another CA

    def dcmtk(self, who: Identity) -> tuple[str, ...]:
        """storescu/echoscu options: TLS with ``who``'s certificate, trusting our CA."""
        return ("+tls", str(who.key), str(who.cert), "+cf", str(self.ca.cert))

    def modality_server(self) -> ssl.SSLContext:
        """CT1's own SCP: its certificate, and client certificates from our CA required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca.cert)
        context.load_cert_chain(self.ct1.cert, self.ct1.key)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def modality_client(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca.cert)
        context.load_cert_chain(self.ct1.cert, self.ct1.key)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = authority(tmp, "site-ca")
    return Pki(
        ca=ca,
        gateway=ca.issue(tmp, "gateway"),
        ct1=ca.issue(tmp, "ct1"),
        intruder=authority(tmp, "other-ca").issue(tmp, "intruder"),
    )


@dataclass
class Site:
    up: Up
    tls_port: int
    ct1: Modality
    pki: Pki
    tmp: Path


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-listener", "two-listeners"])
def site(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, request: pytest.FixtureRequest
) -> Iterator[Site]:
    """`up` with DICOM TLS only (plain port off), mutual TLS, and an allow-list; in `up`'s
    own process, then in two listener processes sharing the TLS port (GATEWAY_LISTENERS):
    TLS, the allow-list, the peer log and Storage Commitment whichever accepts."""
    tmp = tmp_path_factory.mktemp("tls")
    tls_port = free_port()
    with Modality("CT1", ssl_context=pki.modality_server()) as ct1:
        env = gateway_env(
            tmp / "var",
            GATEWAY_TLS_CERT=str(pki.gateway.cert),
            GATEWAY_TLS_KEY=str(pki.gateway.key),
            GATEWAY_TLS_CA=str(pki.ca.cert),
            GATEWAY_TLS_PORT=str(tls_port),
            GATEWAY_PLAIN_DICOM="false",
            GATEWAY_ALLOWED_AETS="CT1=127.0.0.1,ECHOSCU,FARAWAY=10.9.9.0/24",
            GATEWAY_COMMITMENT_PEERS=f"CT1=127.0.0.1:{ct1.scp_port}",
            GATEWAY_LISTENERS=request.param,
        )
        state = Site(up=Up(env), tls_port=tls_port, ct1=ct1, pki=pki, tmp=tmp)
        try:
            yield state
        finally:
            assert state.up.stop() == 0


def test_echo_and_store_over_tls_are_acked_and_indexed(site: Site) -> None:
    assert echoscu(site.tls_port, *site.pki.dcmtk(site.pki.ct1)).returncode == 0
    files = dicom_fixtures.ct_series(site.tmp / "stored", 3, rows=64, cols=64,
                                     prefix="1.2.826.0.1.3680043.10.1011.1.")  # fmt: skip
    result = storescu(site.tls_port, files, aet="CT1", extra=site.pki.dcmtk(site.pki.ct1))
    assert result.returncode == 0, result.stdout[-2000:]
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    rows = [r for r in site.up.wait_done(3) if r["sop_instance_uid"] in sent]
    assert len(rows) == 3
    assert {r["calling_aet"] for r in rows} == {"CT1"}
    assert all(r["stage"] == "committed" for r in rows)


def test_the_banner_shows_the_tls_port_and_the_plain_port_is_off(site: Site) -> None:
    banner = "".join(site.up.banner)
    assert f"DICOM TLS       XRAYGW@127.0.0.1:{site.tls_port}" in banner
    assert "client certificates required" in banner
    assert site.up.value("DICOM") == "off"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", site.up.dicom_port), timeout=10).close()


@pytest.mark.parametrize("client", ["anonymous", "other CA", "plain DICOM"])
def test_with_mutual_tls_a_client_without_a_valid_certificate_is_refused(
    site: Site, client: str
) -> None:
    before = len(site.up.rows())
    options = {
        "anonymous": ("+tla", "+cf", str(site.pki.ca.cert)),
        "other CA": site.pki.dcmtk(site.pki.intruder),
        "plain DICOM": (),
    }[client]
    files = dicom_fixtures.ct_series(site.tmp / f"refused-{client}", 1, rows=64, cols=64,
                                     prefix="1.2.826.0.1.3680043.10.1011.2.")  # fmt: skip
    assert echoscu(site.tls_port, *options).returncode != 0
    assert storescu(site.tls_port, files, aet="CT1", extra=options).returncode != 0
    assert len(site.up.rows()) == before
    # still serving the modality with a valid certificate
    assert echoscu(site.tls_port, *site.pki.dcmtk(site.pki.ct1)).returncode == 0


def test_the_allow_list_applies_over_tls(site: Site) -> None:
    """FARAWAY may only call from 10.9.9.0/24; an AE not in the list not at all."""
    for aet in ("FARAWAY", "NOBODY"):
        result = echoscu(site.tls_port, *site.pki.dcmtk(site.pki.ct1), aet=aet)
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    log = (site.up.data_dir.parent / "up.log").read_text()
    assert (
        "calling AE FARAWAY from 127.0.0.1 is not allowed: FARAWAY may come from 10.9.9.0/24" in log
    )
    assert "calling AE NOBODY from 127.0.0.1 is not allowed" in log
    assert "Traceback" not in log


def test_a_commitment_report_on_a_new_association_goes_over_tls(site: Site) -> None:
    """CT1 asked over TLS and released at once; its own SCP takes only TLS with our CA."""
    files = dicom_fixtures.ct_series(site.tmp / "commit", 2, rows=64, cols=64,
                                     prefix="1.2.826.0.1.3680043.10.1011.3.")  # fmt: skip
    refs = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    result = storescu(site.tls_port, files, aet="CT1", extra=site.pki.dcmtk(site.pki.ct1))
    assert result.returncode == 0, result.stdout[-2000:]
    site.up.wait_done(len(site.up.rows()))

    status, same = site.ct1.request(
        site.tls_port,
        refs,
        release_at_once=True,
        tls_args=(site.pki.modality_client(), "127.0.0.1"),
    )
    assert status == 0x0000 and same is None
    report = site.ct1.next_report(timeout=120)
    assert report.how == "new"
    assert report.client_cert_cn == "gateway", "the report did not come over TLS as the gateway"
    assert report.event_type == 1 and report.committed == {uid for _, uid in refs}


# -- the listener alone, and `up` refusing a bad configuration ------------------------------


@pytest.fixture
def tls_receiver(tmp_path: Path, pki: Pki) -> Iterator[Receiver]:
    """TLS with the server's certificate only: any client may connect (no GATEWAY_TLS_CA)."""
    index = Index(tmp_path / "index.sqlite")
    rx = Receiver(spool=Spool(tmp_path / "spool", reserve_bytes=0), index=index)
    context = server_context(cert=pki.gateway.cert, key=pki.gateway.key)
    rx.start(port=free_port(), tls_port=free_port(), ssl_context=context)
    yield rx
    rx.stop()
    index.close()


def test_one_silent_connection_does_not_stop_the_tls_port(tls_receiver: Receiver, pki: Pki) -> None:
    """pynetdicom handshakes in its accept loop: a peer that never speaks would hold it."""
    silent = [socket.create_connection(("127.0.0.1", tls_receiver.tls_port)) for _ in range(3)]
    try:
        assert echoscu(tls_receiver.tls_port, "+tla", "+cf", str(pki.ca.cert)).returncode == 0
    finally:
        for sock in silent:
            sock.close()


def test_without_a_ca_any_client_may_use_tls_and_plain_still_works(
    tls_receiver: Receiver, pki: Pki
) -> None:
    assert echoscu(tls_receiver.tls_port, *pki.dcmtk(pki.intruder)).returncode == 0
    assert echoscu(tls_receiver.port).returncode == 0
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca.cert)
    assoc = ae.associate("127.0.0.1", tls_receiver.tls_port, ae_title="XRAYGW",
                         tls_args=(context, "127.0.0.1"))  # fmt: skip
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_up_refuses_a_tls_key_others_can_read(tmp_path: Path, pki: Pki) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(pki.gateway.key.read_bytes())
    key.chmod(0o644)
    env = gateway_env(tmp_path / "var", GATEWAY_TLS_CERT=str(pki.gateway.cert),
                      GATEWAY_TLS_KEY=str(key), GATEWAY_TLS_PORT=str(free_port()))  # fmt: skip
    result = run(env, "up")
    assert result.returncode == 1
    assert f"the TLS key {key} (GATEWAY_TLS_KEY) is open to other users (mode 644)" in result.stderr
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "chain").exists(), "up started parts before checking TLS"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"GATEWAY_TLS_CERT": "{cert}"}, "GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together"),
        ({"GATEWAY_PLAIN_DICOM": "false"}, "GATEWAY_PLAIN_DICOM=false leaves no DICOM port"),
        ({"GATEWAY_TLS_CERT": "{missing}", "GATEWAY_TLS_KEY": "{key}"},
         "cannot load the TLS certificate"),
        ({"GATEWAY_TLS_CERT": "{cert}", "GATEWAY_TLS_KEY": "{key}", "GATEWAY_TLS_CA": "{missing}"},
         "cannot load the CA certificates"),
        ({"GATEWAY_TLS_CERT": "{key}", "GATEWAY_TLS_KEY": "{key}"},
         "cannot load the TLS certificate"),
    ],
)  # fmt: skip
def test_up_explains_a_tls_misconfiguration(
    tmp_path: Path, pki: Pki, settings: dict[str, str], message: str
) -> None:
    names = {"cert": pki.gateway.cert, "key": pki.gateway.key, "missing": tmp_path / "none.pem"}
    extra = {name: value.format(**names) for name, value in settings.items()}
    result = run(gateway_env(tmp_path / "var", GATEWAY_TLS_PORT=str(free_port()), **extra), "up")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
