"""Who reads through Orthanc: the HTTP filter's reader, looked up by the storage read's thread."""

from __future__ import annotations

import base64
import threading

from gateway.orthanc_plugin.readers import (
    DICOM_OR_JOB,
    UNATTRIBUTED,
    Readers,
    basic_user,
    reader_of,
    route_of,
)


def _basic(credentials: str) -> dict[str, object]:
    token = base64.b64encode(credentials.encode()).decode()
    return {"headers": {"authorization": f"Basic {token}"}, "ip": "10.0.0.9"}


def test_the_reader_is_the_basic_auth_user_else_the_address_and_never_the_password() -> None:
    reader = reader_of("/instances/x/file", _basic("alice:s3cret"))
    assert (reader.who, reader.who_kind, reader.route) == ("alice", "orthanc-user", "rest")
    assert "s3cret" not in repr(reader)
    assert reader_of("/wado", {"ip": "10.0.0.9"}).who_kind == "address"
    assert reader_of("/wado", {}).who == UNATTRIBUTED
    assert basic_user("Bearer abc") is None and basic_user("Basic !!!") is None


def test_routes_name_the_access_path() -> None:
    assert [route_of(u) for u in ("/web-viewer/instances/a", "/wado?x", "/dicom-web/studies",
                                  "/app/explorer.html", "/studies/a/archive")] == [
        "viewer", "wado", "dicomweb", "explorer", "rest",
    ]  # fmt: skip


def test_one_request_journals_an_instance_once_and_other_threads_are_unattributed() -> None:
    readers = Readers()
    readers.begin("/web-viewer/instances/deflate-a_0", _basic("bob:pw"))
    assert readers.first_read("1.2.3") == ("bob", "orthanc-user", "viewer")
    assert readers.first_read("1.2.3") is None  # the viewer's check, then Orthanc's decode
    assert readers.first_read("1.2.4") == ("bob", "orthanc-user", "viewer")
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(readers.first_read("1.2.3")))
    thread.start()
    thread.join()
    assert seen == [(UNATTRIBUTED, UNATTRIBUTED, DICOM_OR_JOB)]  # C-GET, C-MOVE, jobs
    readers.begin("/instances/a/file", _basic("bob:pw"))  # the next request starts afresh
    assert readers.first_read("1.2.3") == ("bob", "orthanc-user", "rest")


def test_the_reader_is_worked_out_on_the_first_read_and_the_credential_then_dropped() -> None:
    """The filter only notes a request (most read no file); the first storage read names
    its reader, the same one :func:`reader_of` gives, and nothing keeps the password."""
    readers = Readers()
    readers.begin("/dicom-web/studies/1/series/2/instances/3", _basic("carol:hunter2"))
    noted = repr(readers._by_thread)
    assert "hunter2" not in noted and base64.b64encode(b"carol:hunter2").decode() not in noted
    assert readers.first_read("1.2.5") == ("carol", "orthanc-user", "dicomweb")
    current, direct = readers.current(), reader_of("/dicom-web/", _basic("carol:hunter2"))
    assert current is not None
    assert (current.who, current.who_kind, current.route) == (
        direct.who, direct.who_kind, direct.route,
    )  # fmt: skip
    assert "hunter2" not in repr(readers._by_thread)
    readers.begin("/wado?x", {"ip": "10.1.2.3"})
    assert readers.first_read("1.2.5") == ("10.1.2.3", "address", "wado")
