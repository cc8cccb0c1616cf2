"""The Orthanc client against a stand-in transport: what each answer of Orthanc becomes.

``responses`` replaces requests' transport (``HTTPAdapter.send``), as httpx's
``MockTransport`` does for httpx: every byte above it, orthanc-rest-client and apiron
included, is the real client. tests/integration/test_orthanc.py runs it against Orthanc.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses

import dicom_fixtures
from gateway.core.fingerprint import fingerprint_bytes
from gateway.errors import InstanceMissing, PacsRejected, PacsUnavailable
from gateway.pacs.client import STORED_FILE_HEADER, Pacs

HOST = "http://127.0.0.1:8042"
SECRET = "s3cret-pw"
ID = "0b4d1c2a-11111111-22222222-33333333-44444444"


@pytest.fixture
def orthanc() -> Iterator[responses.RequestsMock]:
    """Orthanc as a script of answers; a request no answer matches fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def pacs() -> Pacs:
    return Pacs(f"http://xray:{SECRET}@127.0.0.1:8042", user=None, password=None, timeout=5)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = dicom_fixtures.ct_series(tmp_path_factory.mktemp("ct"), count=1, rows=8, cols=8)
    return path


def stored(orthanc: responses.RequestsMock, status: str) -> None:
    orthanc.post(f"{HOST}/instances/", json={"ID": ID, "Status": status, "Path": f"/x/{ID}"})


# --- store ------------------------------------------------------------------------------------


def test_a_stored_instance_is_success_and_its_bytes_and_credentials_are_sent(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path
) -> None:
    stored(orthanc, "Success")
    digest = fingerprint_bytes(instance.read_bytes()).digest
    result = pacs.store(instance, digest=digest)
    assert (result.orthanc_id, result.status, result.conflict) == (ID, "Success", False)
    assert (result.digest, result.orthanc_digest) == (digest, None)
    (call,) = orthanc.calls
    body = call.request.body
    sent = body.read() if isinstance(body, io.BufferedReader) else body
    assert sent == instance.read_bytes()
    assert call.request.headers["Content-Type"] == "application/dicom"
    expected = base64.b64encode(f"xray:{SECRET}".encode()).decode()
    assert call.request.headers["Authorization"] == f"Basic {expected}"
    assert call.request.url is not None and SECRET not in call.request.url


def test_already_stored_with_the_same_dataset_is_success_without_conflict(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path
) -> None:
    """Orthanc's copy differs in its File Meta only (another hop rewrote it): same digest."""
    data = instance.read_bytes()
    theirs = data.replace(b"XRGW_FIXTURES_1 ", b"OTHER_HOP_00001 ", 1)
    assert theirs != data
    stored(orthanc, "AlreadyStored")
    orthanc.get(f"{HOST}/instances/{ID}/file/", body=theirs)
    result = pacs.store(instance, digest=fingerprint_bytes(data).digest)
    assert (result.status, result.conflict) == ("AlreadyStored", False)
    assert result.orthanc_digest == result.digest
    assert orthanc.calls[1].request.headers["Accept-Encoding"] == "identity"


def test_already_stored_with_other_dataset_bytes_is_a_conflict(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path
) -> None:
    data = instance.read_bytes()
    theirs = data[:-2] + bytes([data[-2] ^ 0xFF, data[-1]])
    stored(orthanc, "AlreadyStored")
    orthanc.get(f"{HOST}/instances/{ID}/file/", body=theirs)
    result = pacs.store(instance, digest=fingerprint_bytes(data).digest)
    assert (result.status, result.conflict) == ("AlreadyStored", True)
    assert result.orthanc_digest == fingerprint_bytes(theirs).digest != result.digest


def test_already_stored_with_an_unreadable_copy_is_a_conflict(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path
) -> None:
    stored(orthanc, "AlreadyStored")
    orthanc.get(f"{HOST}/instances/{ID}/file/", body=b"not dicom at all")
    result = pacs.store(instance, digest=fingerprint_bytes(instance.read_bytes()).digest)
    assert (result.conflict, result.orthanc_digest) == (True, None)


@pytest.mark.parametrize(
    "answer",
    [{"Status": "Success"}, {"ID": ID, "Status": "Failure"}, ["not", "a", "dict"]],
    ids=["no id", "another status", "not an object"],
)
def test_an_answer_that_does_not_say_stored_is_rejected(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path, answer: object
) -> None:
    orthanc.post(f"{HOST}/instances/", json=answer)
    with pytest.raises(PacsRejected):
        pacs.store(instance, digest=b"\x00" * 32)


# --- how failures are translated --------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_orthanc_refusing_the_file_is_rejected_with_its_message(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path, status: int
) -> None:
    orthanc.post(
        f"{HOST}/instances/", status=status,
        json={"Message": "Bad file format", "Details": "Cannot parse an invalid DICOM file"},
    )  # fmt: skip
    with pytest.raises(PacsRejected) as rejected:
        pacs.store(instance, digest=b"\x00" * 32)
    assert rejected.value.status == status
    assert "Bad file format: Cannot parse an invalid DICOM file" in str(rejected.value)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429, 404])
def test_a_failing_or_misaddressed_orthanc_is_unavailable(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path, status: int
) -> None:
    """5xx, and any 4xx about the connection rather than the file: retrying may succeed."""
    orthanc.post(f"{HOST}/instances/", status=status, body="upstream trouble")
    with pytest.raises(PacsUnavailable) as unavailable:
        pacs.store(instance, digest=b"\x00" * 32)
    assert unavailable.value.status == status
    assert "upstream trouble" in str(unavailable.value)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_unavailable_and_say_so(
    orthanc: responses.RequestsMock, pacs: Pacs, status: int
) -> None:
    orthanc.get(f"{HOST}/system/", status=status, body=f"who is xray:{SECRET}?")
    with pytest.raises(PacsUnavailable, match="credentials refused") as unavailable:
        pacs.check()
    assert unavailable.value.status == status and SECRET not in str(unavailable.value)


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError(f"Max retries exceeded with url: http://xray:{SECRET}@127.0.0.1"),
        requests.ReadTimeout("Read timed out. (read timeout=5)"),
    ],
    ids=["refused", "timeout"],
)
def test_no_answer_is_unavailable_without_the_credentials(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path, error: Exception
) -> None:
    orthanc.post(f"{HOST}/instances/", body=error)
    with pytest.raises(PacsUnavailable) as unavailable:
        pacs.store(instance, digest=b"\x00" * 32)
    assert unavailable.value.status is None
    assert SECRET not in str(unavailable.value) and HOST in str(unavailable.value)


def test_a_closed_port_is_unavailable(instance: Path) -> None:
    """No stand-in: a real refused connection on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pacs = Pacs(f"http://xray:{SECRET}@127.0.0.1:{port}", user=None, password=None, timeout=5)
    with pytest.raises(PacsUnavailable) as unavailable:
        pacs.store(instance, digest=b"\x00" * 32)
    assert "ConnectionError" in str(unavailable.value) and SECRET not in str(unavailable.value)
    assert SECRET not in repr(pacs)


def test_an_answer_that_is_not_json_is_not_orthanc(
    orthanc: responses.RequestsMock, pacs: Pacs
) -> None:
    """requests' JSONDecodeError is a RequestException: it says what it could not decode."""
    orthanc.get(f"{HOST}/system/", body="<html>a login page</html>")
    with pytest.raises(PacsUnavailable, match="could not check: JSONDecodeError"):
        pacs.check()


def test_orthancs_error_message_is_redacted_too(
    orthanc: responses.RequestsMock, pacs: Pacs, instance: Path
) -> None:
    orthanc.post(
        f"{HOST}/instances/", status=500,
        json={"Message": "Internal error", "Details": f"peer http://xray:{SECRET}@10.0.0.9 down"},
    )  # fmt: skip
    with pytest.raises(PacsUnavailable) as unavailable:
        pacs.store(instance, digest=b"\x00" * 32)
    assert "peer http://10.0.0.9 down" in str(unavailable.value)
    assert SECRET not in str(unavailable.value)


# --- reading back -----------------------------------------------------------------------------


def test_a_missing_instance_is_instance_missing(
    orthanc: responses.RequestsMock, pacs: Pacs
) -> None:
    orthanc.get(f"{HOST}/instances/{ID}/file/", status=404, json={"Message": "Unknown resource"})
    orthanc.delete(f"{HOST}/instances/{ID}/", status=404, json={"Message": "Unknown resource"})
    with pytest.raises(InstanceMissing):
        pacs.file(ID)
    with pytest.raises(InstanceMissing):
        pacs.delete(ID)


def test_find_takes_the_bare_uid_and_answers_the_instance_id(
    orthanc: responses.RequestsMock, pacs: Pacs
) -> None:
    orthanc.post(
        f"{HOST}/tools/lookup/",
        json=[{"Type": "Series", "ID": "series"}, {"Type": "Instance", "ID": ID}],
    )
    orthanc.post(f"{HOST}/tools/lookup/", json=[])
    assert pacs.find("1.2.3.4") == ID
    assert orthanc.calls[0].request.body in ("1.2.3.4", b"1.2.3.4")  # not JSON-quoted
    assert pacs.find("1.2.3.5") is None


def test_find_instances_pages_until_a_short_page(
    orthanc: responses.RequestsMock, pacs: Pacs
) -> None:
    def page(start: int, count: int) -> list[dict[str, object]]:
        return [{"ID": f"id{n}", "MainDicomTags": {"SOPInstanceUID": f"1.{n}"}}
                for n in range(start, start + count)]  # fmt: skip

    orthanc.post(f"{HOST}/tools/find/", json=page(0, 2))
    orthanc.post(f"{HOST}/tools/find/", json=page(2, 1))
    found = pacs.find_instances({"StudyInstanceUID": "9.9"}, page=2)
    assert found == [("id0", "1.0"), ("id1", "1.1"), ("id2", "1.2")]
    asked = [json.loads(call.request.body or b"{}") for call in orthanc.calls]
    assert [(a["Since"], a["Limit"], a["Query"]) for a in asked] == [
        (0, 2, {"StudyInstanceUID": "9.9"}), (2, 2, {"StudyInstanceUID": "9.9"}),
    ]  # fmt: skip


def test_instances_pages_through_the_archive(orthanc: responses.RequestsMock, pacs: Pacs) -> None:
    orthanc.get(f"{HOST}/instances/", json=["a", "b"])
    orthanc.get(f"{HOST}/instances/", json=["c"])
    assert pacs.instances(page=2) == ["a", "b", "c"]
    assert [call.request.url for call in orthanc.calls] == [
        f"{HOST}/instances/?since=0&limit=2", f"{HOST}/instances/?since=2&limit=2",
    ]  # fmt: skip


def test_the_stored_file_route_gets_the_secret_and_falls_back_without_the_plugin(
    orthanc: responses.RequestsMock, instance: Path
) -> None:
    data = instance.read_bytes()
    pacs = Pacs(HOST, user="xray", password=SECRET, stored_file_token="token-1")
    orthanc.get(f"{HOST}/xray/instances/{ID}/stored-file", body=data)
    orthanc.get(f"{HOST}/xray/instances/{ID}/stored-file", status=404)  # no plugin
    orthanc.get(f"{HOST}/instances/{ID}/file/", body=data)
    for _ in range(2):
        sink = io.BytesIO()
        assert pacs.fetch_stored(ID, sink) == len(data) and sink.getvalue() == data
    assert orthanc.calls[0].request.headers[STORED_FILE_HEADER] == "token-1"
    assert STORED_FILE_HEADER not in orthanc.calls[2].request.headers  # only to its route


def test_a_refused_stored_file_secret_is_unavailable_and_names_the_setting(
    orthanc: responses.RequestsMock, pacs: Pacs
) -> None:
    orthanc.get(f"{HOST}/xray/instances/{ID}/stored-file", status=403)
    with pytest.raises(PacsUnavailable, match="GATEWAY_ORTHANC_STORED_FILE_TOKEN") as refused:
        pacs.fetch_stored(ID, io.BytesIO())
    assert refused.value.status == 403
