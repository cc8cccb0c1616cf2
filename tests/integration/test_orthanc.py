"""The embedded Orthanc and the gateway's Orthanc client, against a real Orthanc 1.10."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

import dicom_fixtures
from gateway.core.fingerprint import fingerprint, fingerprint_bytes
from gateway.errors import ConfigError, InstanceMissing, PacsRejected, PacsUnavailable
from gateway.pacs.client import Pacs
from gateway.pacs.embedded import EmbeddedOrthanc, python_plugin_library
from tests.integration.dicom import DCMTK
from tests.integration.pacs import TestOrthanc

pytestmark = pytest.mark.integration

NAMES = [fixture.name for fixture in dicom_fixtures.CATALOGUE]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = dicom_fixtures.generate(tmp_path_factory.mktemp("fixtures"))
    return {path.stem: path for path in paths}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestOrthanc]:
    with TestOrthanc(data_dir=tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@pytest.fixture
def pacs(server: TestOrthanc) -> Iterator[Pacs]:
    """The shared Orthanc's client; every instance a test stored is deleted afterwards."""
    yield server.pacs
    for orthanc_id in server.pacs.instances():
        server.pacs.delete(orthanc_id)


def digest_of(path: Path) -> bytes:
    with path.open("rb") as stream:
        return fingerprint(stream).digest


def local_non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, if it has one (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only, no packet leaves
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


# --- the embedded Orthanc -------------------------------------------------------------


def test_orthanc_starts_and_answers_with_its_credentials(server: TestOrthanc) -> None:
    user, password = server.orthanc.credentials
    reply = requests.get(f"{server.orthanc.url}/system", auth=(user, password), timeout=5)
    assert reply.status_code == 200
    assert reply.json()["DicomAet"] == "TESTPACS"
    assert server.pacs.check() == reply.json()["Version"]
    assert server.orthanc.url.startswith("http://127.0.0.1:")


def test_a_wrong_password_gets_401(server: TestOrthanc) -> None:
    user, _ = server.orthanc.credentials
    for auth in [(user, "wrong-password"), None]:
        reply = requests.get(f"{server.orthanc.url}/system", auth=auth, timeout=5)
        assert reply.status_code == 401
    wrong = Pacs(server.orthanc.url, user=user, password="wrong-password")
    with pytest.raises(PacsUnavailable, match="credentials refused") as caught:
        wrong.check()
    assert caught.value.status == 401


def test_config_is_loopback_only_authenticated_and_keeps_bytes(server: TestOrthanc) -> None:
    orthanc = server.orthanc
    config = json.loads(orthanc.config_path.read_text())
    user, password = orthanc.credentials
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {user: password}
    assert config["StorageCompression"] is False
    assert config["OverwriteInstances"] is False
    assert config["MaximumStorageCacheSize"] == 0
    assert config["WebDavEnabled"] is False
    assert config["HttpCompressionEnabled"] is False
    assert config["HttpPort"] == orthanc.http_port
    assert config["DicomPort"] == orthanc.dicom_port
    home = server.data_dir / "orthanc"
    assert Path(config["StorageDirectory"]).is_relative_to(home.resolve())
    assert Path(config["IndexDirectory"]).is_relative_to(home.resolve())
    assert "Plugins" not in config and "PythonScript" not in config
    # the config holds the password in clear text, as Orthanc needs it
    assert stat.S_IMODE(orthanc.config_path.stat().st_mode) == 0o600


def test_credentials_file_is_0600_and_survives_a_restart(server: TestOrthanc) -> None:
    path = server.data_dir / "keys" / "orthanc-http.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert (stored["user"], stored["password"]) == server.orthanc.credentials
    assert len(stored["password"]) >= 32
    again = EmbeddedOrthanc(data_dir=server.data_dir)
    assert again.credentials == server.orthanc.credentials


def test_http_clients_not_on_loopback_are_refused(server: TestOrthanc) -> None:
    address = local_non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    # Orthanc 1.10 listens on every interface; RemoteAccessAllowed=false refuses the rest.
    reply = requests.get(
        f"http://{address}:{server.orthanc.http_port}/system",
        auth=server.orthanc.credentials,
        timeout=5,
    )
    assert reply.status_code == 401


def test_dicom_answers_only_the_modalities_in_its_config(tmp_path: Path) -> None:
    modalities = {"viewer": ["KNOWNSCU", "127.0.0.1", 104]}
    with TestOrthanc(data_dir=tmp_path, extra_config={"DicomModalities": modalities}) as server:
        config = json.loads(server.orthanc.config_path.read_text())
        assert config["DicomModalities"] == modalities

        def echo(calling: str) -> int:
            return subprocess.run(
                [str(DCMTK / "echoscu"), "-aet", calling, "-aec", "TESTPACS",
                 "127.0.0.1", str(server.orthanc.dicom_port)],
                capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
            ).returncode  # fmt: skip

        assert echo("KNOWNSCU") == 0
        assert echo("STRANGER") != 0


def test_extra_config_may_not_weaken_the_guarantees(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RemoteAccessAllowed"):
        EmbeddedOrthanc(data_dir=tmp_path, extra_config={"RemoteAccessAllowed": True})


def test_plugin_keys_are_in_the_config_only_when_a_plugin_is_given(tmp_path: Path) -> None:
    bare = EmbeddedOrthanc(data_dir=tmp_path / "bare").config()
    assert "Plugins" not in bare and "PythonScript" not in bare
    script = tmp_path / "plugin.py"
    script.write_text("import orthanc\n")
    with_plugin = EmbeddedOrthanc(data_dir=tmp_path / "with", plugin=script).config()
    assert with_plugin["Plugins"] == [str(python_plugin_library())]
    assert with_plugin["PythonScript"] == str(script.resolve())


def test_the_plugin_slot_loads_a_python_script(tmp_path: Path) -> None:
    script = tmp_path / "xray_plugin.py"
    script.write_text(
        "import orthanc\n"
        "\n"
        'orthanc.LogWarning("xray plugin slot")\n'
        "\n"
        "\n"
        "def ping(output, uri, **request):\n"
        '    output.AnswerBuffer("pong", "text/plain")\n'
        "\n"
        "\n"
        'orthanc.RegisterRestCallback("/xray/ping", ping)\n'
    )
    with TestOrthanc(data_dir=tmp_path / "var", plugin=script) as server:
        reply = requests.get(
            f"{server.orthanc.url}/xray/ping", auth=server.orthanc.credentials, timeout=5
        )
        assert (reply.status_code, reply.text) == (200, "pong")
        # the plugin's callback sits behind Orthanc's authentication like the rest
        refused = requests.get(f"{server.orthanc.url}/xray/ping", timeout=5)
        assert refused.status_code == 401
        assert "xray plugin slot" in server.log()


# --- Pacs: the gateway's Orthanc client -----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_store_keeps_the_dataset_bytes_in_every_transfer_syntax(
    pacs: Pacs, fixtures: dict[str, Path], name: str
) -> None:
    path = fixtures[name]
    ours = digest_of(path)
    result = pacs.store(path, digest=ours)
    assert result.status == "Success"
    assert not result.conflict
    assert pacs.fingerprint(result.orthanc_id).digest == ours
    assert fingerprint_bytes(pacs.file(result.orthanc_id)).digest == ours


def test_storing_the_same_file_again_is_already_stored_without_conflict(
    pacs: Pacs, fixtures: dict[str, Path]
) -> None:
    path = fixtures["ct_chest_1"]
    ours = digest_of(path)
    first = pacs.store(path, digest=ours)
    again = pacs.store(path, digest=ours)
    assert (first.status, again.status) == ("Success", "AlreadyStored")
    assert again.orthanc_id == first.orthanc_id
    assert not again.conflict
    assert again.orthanc_digest == ours


def test_other_bytes_under_the_same_uid_are_a_conflict(
    pacs: Pacs, fixtures: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = fixtures["ct_chest_2"]
    edited = tmp_path / "edited.dcm"
    ds = dcmread(original)
    old_name = str(ds.PatientName)
    ds.PatientName = "Edited^Somebody"  # same Study/Series/SOP Instance UIDs
    ds.save_as(edited)
    stored, theirs = digest_of(original), digest_of(edited)
    assert stored != theirs

    first = pacs.store(original, digest=stored)
    with caplog.at_level(logging.WARNING, logger="gateway.pacs.client"):
        second = pacs.store(edited, digest=theirs)

    assert second.status == "AlreadyStored"
    assert second.orthanc_id == first.orthanc_id
    assert second.conflict
    assert (second.digest, second.orthanc_digest) == (theirs, stored)
    # Orthanc kept the first version (OverwriteInstances: false)
    assert pacs.fingerprint(first.orthanc_id).digest == stored
    assert first.orthanc_id in caplog.text
    assert stored.hex()[:16] in caplog.text and theirs.hex()[:16] in caplog.text
    for phi in (old_name, "Edited", str(ds.PatientID)):
        assert phi not in caplog.text


def test_garbage_is_rejected_with_orthancs_message(pacs: Pacs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(PacsRejected, match="Bad file format") as caught:
        pacs.store(garbage, digest=b"\0" * 32)
    assert caught.value.status == 400
    assert pacs.instances() == []


def test_find_file_and_delete(pacs: Pacs, fixtures: dict[str, Path]) -> None:
    path = fixtures["mr_head"]
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert pacs.find(uid) is None
    orthanc_id = pacs.store(path, digest=digest_of(path)).orthanc_id
    assert pacs.find(uid) == orthanc_id
    assert pacs.instances() == [orthanc_id]
    assert pacs.file(orthanc_id)[128:132] == b"DICM"

    pacs.delete(orthanc_id)
    assert pacs.find(uid) is None
    assert pacs.instances() == []
    with pytest.raises(InstanceMissing):
        pacs.delete(orthanc_id)
    with pytest.raises(InstanceMissing):
        pacs.file(orthanc_id)


def test_instances_pages_through_the_whole_archive(pacs: Pacs, fixtures: dict[str, Path]) -> None:
    ids = {pacs.store(path, digest=digest_of(path)).orthanc_id for path in fixtures.values()}
    assert sorted(pacs.instances(page=3)) == sorted(ids)


def test_a_stopped_orthanc_is_unavailable(tmp_path: Path, fixtures: dict[str, Path]) -> None:
    server = TestOrthanc(data_dir=tmp_path).start()
    server.pacs.check()
    server.stop()
    path = fixtures["mr_head"]
    with pytest.raises(PacsUnavailable, match="ConnectionError"):
        server.pacs.store(path, digest=digest_of(path))
    with pytest.raises(PacsUnavailable):
        server.pacs.check()


def test_an_orthanc_that_never_answers_times_out(fixtures: dict[str, Path]) -> None:
    # A listening socket nobody accepts from: TCP connects, no HTTP answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        pacs = Pacs(f"http://127.0.0.1:{port}", user="u", password="p", timeout=0.5)
        path = fixtures["mr_head"]
        started = time.monotonic()
        with pytest.raises(PacsUnavailable, match="Timeout"):
            pacs.store(path, digest=digest_of(path))
        assert time.monotonic() - started < 5


def test_two_clients_keep_their_own_orthanc(tmp_path: Path, server: TestOrthanc) -> None:
    # orthanc-rest-client keeps the base URL on shared classes; Pacs must not.
    other = Pacs("http://127.0.0.1:9", user="u", password="p", timeout=1)
    assert server.pacs.check()
    with pytest.raises(PacsUnavailable):
        other.check()
