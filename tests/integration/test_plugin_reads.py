"""Every read the plugin must check, in a real Orthanc 1.10 with the Web Viewer and DICOMweb.

Each test is one hole the trust-model review found (issue 12, "Reads the plugin does not
check"): the stored-file route open to any Orthanc user, DICOMweb's metadata cache and the
Web Viewer's cache served unchecked, another image's file served under an instance's id,
an unreadable index served, and files pydicom cannot parse left without an arrival digest.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread

from gateway.errors import PacsUnavailable
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.embedded import EmbeddedOrthanc, viewer_plugin_libraries
from tests.integration.pacs import TestOrthanc
from tests.integration.plugin_helpers import (
    Study,
    alerts,
    flip_pixel_byte,
    integrity,
    make_study,
    record,
    store,
    stored_file,
)

pytestmark = pytest.mark.integration

CATALOG = Path("orthanc") / "xray-attachments.sqlite"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestOrthanc]:
    data_dir = tmp_path_factory.mktemp("plugin-reads")
    server = TestOrthanc(
        data_dir=data_dir,
        plugin=ENTRY_SCRIPT,
        plugin_config=plugin_section(data_dir=data_dir, web_viewer=True),
        extra_plugins=viewer_plugin_libraries(),
    )
    with server:
        yield server


@pytest.fixture
def auth(pacs: TestOrthanc) -> tuple[str, str]:
    return pacs.orthanc.credentials


@pytest.fixture
def recorded(pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path) -> tuple[Study, list[str]]:
    """Two slices recorded in the gateway's index, then stored in Orthanc."""
    study = make_study(tmp_path, count=2)
    record(pacs.data_dir / "index.sqlite", study.files)
    return study, store(pacs.orthanc.url, auth, study.files)


def get(pacs: TestOrthanc, auth: tuple[str, str], path: str, **kwargs: object) -> requests.Response:
    return requests.get(f"{pacs.orthanc.url}{path}", auth=auth, timeout=60, **kwargs)  # type: ignore[arg-type]


# --- stored-file ---------------------------------------------------------------------------


def test_stored_file_answers_only_the_gateway(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]], tmp_path: Path
) -> None:
    _, ids = recorded
    path = stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[0])
    flip_pixel_byte(path)
    altered = path.read_bytes()
    route = f"/xray/instances/{ids[0]}/stored-file"

    # any Orthanc user, without the gateway's secret or with a wrong one, gets 403
    for headers in ({}, {"X-Xray-Stored-File-Token": "guessed-" + "x" * 40}):
        reply = get(pacs, auth, route, headers=headers)
        assert reply.status_code == 403, (headers, reply.status_code)
        assert altered[-4096:] not in reply.content

    # the gateway's own client sends the secret it generated in its key directory
    token_file = pacs.data_dir / "keys" / "orthanc-stored-file.token"
    assert token_file.stat().st_mode & 0o077 == 0
    assert json.loads(pacs.orthanc.config_path.read_text())["XrayGateway"]["StoredFileToken"]
    with (tmp_path / "copy.dcm").open("w+b") as sink:
        pacs.pacs.fetch_stored(ids[0], sink)
        sink.seek(0)
        assert sink.read() == altered

    # a gateway client without the secret is told what to set
    stranger = type(pacs.pacs)(pacs.orthanc.url, user=auth[0], password=auth[1])
    with pytest.raises(PacsUnavailable, match="GATEWAY_ORTHANC_STORED_FILE_TOKEN"):
        stranger.fetch_stored(ids[0], tmp_path / "none.dcm")  # type: ignore[arg-type]


# --- DICOMweb's metadata cache (attachment 4301) and the Web Viewer's cache ----------------


def test_the_dicomweb_metadata_cache_is_off_and_a_forged_one_is_refused(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    _, ids = recorded
    config = json.loads(pacs.orthanc.config_path.read_text())
    assert config["DicomWeb"]["EnableMetadataCache"] is False
    series = get(pacs, auth, f"/instances/{ids[0]}").json()["ParentSeries"]
    route = f"{pacs.orthanc.url}/series/{series}/attachments/4301"
    forged = json.dumps([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "FORGED"}]}}])

    # through REST, with the plugin: neither written nor read
    assert requests.put(route, data=forged.encode(), auth=auth, timeout=30).status_code == 403

    # written while Orthanc ran without the plugin, then read with it: refused (by the
    # request filter; the storage area refuses the read too, see the unit tests)
    pacs.orthanc.stop()
    plain = EmbeddedOrthanc(
        data_dir=pacs.data_dir, http_port=pacs.orthanc.http_port,
        dicom_port=pacs.orthanc.dicom_port, aet="TESTPACS",
    )  # fmt: skip
    plain.start()
    try:
        put = requests.put(route, data=forged.encode(), auth=auth, timeout=30)
        assert put.status_code == 200, put.text
    finally:
        plain.stop()
    pacs.orthanc.start()
    reply = get(pacs, auth, f"/series/{series}/attachments/4301/data")
    assert reply.status_code >= 400 and b"FORGED" not in reply.content
    # DICOMweb itself still answers, from the checked files
    metadata = get(pacs, auth, dicomweb_series(pacs, auth, series) + "/metadata")
    assert metadata.status_code == 200 and b"FORGED" not in metadata.content


def dicomweb_series(pacs: TestOrthanc, auth: tuple[str, str], series: str) -> str:
    """The DICOMweb path of an Orthanc series."""
    answer = get(pacs, auth, f"/series/{series}").json()
    study = get(pacs, auth, f"/studies/{answer['ParentStudy']}").json()
    return (
        f"/dicom-web/studies/{study['MainDicomTags']['StudyInstanceUID']}"
        f"/series/{answer['MainDicomTags']['SeriesInstanceUID']}"
    )


def test_the_web_viewer_shows_checked_reads_never_its_cache(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    route = f"/web-viewer/instances/deflate-{ids[0]}_0"
    first = get(pacs, auth, route)
    assert first.status_code == 200
    image = first.json()
    # the slice is the recorded file's pixels, in the viewer's Deflate format
    ds = dcmread(study.files[0])
    pixels = np.frombuffer(zlib.decompress(base64.b64decode(image["Orthanc"]["PixelData"])), "<u2")
    shown = pixels.astype(float) * image["slope"] + image["intercept"]
    expected = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(shown.reshape(expected.shape), expected)
    assert (image["rows"], image["columns"]) == expected.shape

    # a forged entry in the viewer's cache directory is never what the viewer gets
    cache = pacs.data_dir / "orthanc" / "webviewer-cache"
    forged = first.content.replace(b'"windowWidth"', b'"windowWidtH"')
    for path in [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == first.content]:
        path.write_bytes(forged)
    again = get(pacs, auth, route)
    assert again.status_code == 200 and again.content != forged
    assert again.json()["Orthanc"]["PixelData"] == image["Orthanc"]["PixelData"]

    # the file altered after it was viewed: refused, not the image decoded before
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[0]))
    refused = get(pacs, auth, route)
    assert refused.status_code >= 400
    assert image["Orthanc"]["PixelData"].encode() not in refused.content


# --- another image's file under an instance's id --------------------------------------------


def test_another_images_file_is_refused_under_an_instances_id(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    a, b = ids
    path_a = stored_file(pacs.data_dir, pacs.orthanc.url, auth, a)
    path_b = stored_file(pacs.data_dir, pacs.orthanc.url, auth, b)
    pacs.orthanc.stop()
    shutil.copyfile(path_b, path_a)  # B, intact and recorded, in A's place
    db = sqlite3.connect(pacs.data_dir / CATALOG)
    try:  # the plugin's catalogue has lost both rows: Orthanc's own records must decide
        with db:
            db.execute("DELETE FROM attachments WHERE orthanc_id IN (?, ?)", (a, b))
    finally:
        db.close()
    pacs.orthanc.start()

    served = get(pacs, auth, f"/instances/{a}/file")
    assert served.status_code >= 400 and served.content != study.files[1].read_bytes()
    verdict = integrity(pacs.orthanc.url, auth, "instances", a)
    assert verdict["status"] == "tampered" and verdict["served"] is False
    assert "another image" in str(verdict["headline"])
    assert any(x["kind"] == "tampered" and x["orthanc_id"] == a for x in alerts(pacs.data_dir))
    # B itself is still served under its own id
    assert get(pacs, auth, f"/instances/{b}/file").content == study.files[1].read_bytes()
    assert integrity(pacs.orthanc.url, auth, "instances", b)["status"] == "intact"


# --- files pydicom cannot parse --------------------------------------------------------------


def test_a_file_made_by_orthanc_that_changes_on_disk_is_refused_and_alerted_by_id(
    pacs: TestOrthanc, auth: tuple[str, str]
) -> None:
    made = requests.post(
        f"{pacs.orthanc.url}/tools/create-dicom",
        json={"Tags": {"PatientName": "CREATEDBYORTHANC", "PatientID": "PLUGIN-READS"}},
        auth=auth, timeout=30,
    )  # fmt: skip
    assert made.status_code == 200, made.text
    orthanc_id = made.json()["ID"]
    assert get(pacs, auth, f"/instances/{orthanc_id}/file").status_code == 200

    path = stored_file(pacs.data_dir, pacs.orthanc.url, auth, orthanc_id)
    path.write_bytes(path.read_bytes().replace(b"CREATEDBYORTHANC", b"CHANGEDBYASHELL."))
    assert get(pacs, auth, f"/instances/{orthanc_id}/file").status_code >= 400
    verdict = integrity(pacs.orthanc.url, auth, "instances", orthanc_id)
    assert verdict["status"] == "tampered" and verdict["served"] is False
    found = [a for a in alerts(pacs.data_dir) if a["orthanc_id"] == orthanc_id]
    assert [a["kind"] for a in found] == ["tampered", "unregistered"]  # newest first
    assert all(a["sop_instance_uid"] != "?" for a in alerts(pacs.data_dir))


# --- fail-closed --------------------------------------------------------------------------


@pytest.mark.parametrize("fail_closed", [True, False])
def test_an_unreadable_index_is_refused_fail_closed_and_served_otherwise(
    tmp_path: Path, fail_closed: bool
) -> None:
    (tmp_path / "index.sqlite").write_bytes(b"this is not an SQLite database\n" * 64)
    study = make_study(tmp_path / "in", count=1)
    section = {**plugin_section(data_dir=tmp_path), "FailClosed": fail_closed}
    with TestOrthanc(data_dir=tmp_path, plugin=ENTRY_SCRIPT, plugin_config=section) as server:
        auth = server.orthanc.credentials
        (orthanc_id,) = store(server.orthanc.url, auth, study.files)
        reply = requests.get(
            f"{server.orthanc.url}/instances/{orthanc_id}/file", auth=auth, timeout=60
        )
        verdict = integrity(server.orthanc.url, auth, "instances", orthanc_id)
        parent = requests.get(f"{server.orthanc.url}/instances/{orthanc_id}", auth=auth, timeout=30)
        series = integrity(server.orthanc.url, auth, "series", parent.json()["ParentSeries"])
    assert verdict["status"] == "unverifiable" and series["status"] == "unverifiable"
    assert series["served"] is (not fail_closed)
    assert str(series["headline"]).startswith("Refused") is fail_closed
    if fail_closed:
        assert reply.status_code >= 400 and study.files[0].read_bytes() not in reply.content
        assert verdict["served"] is False and "Refused" in str(verdict["headline"])
    else:
        assert reply.status_code == 200 and reply.content == study.files[0].read_bytes()
        assert verdict["served"] is True
    errors = [a for a in alerts(tmp_path) if a["kind"] == "error"]
    assert errors and all(a["orthanc_id"] == orthanc_id for a in errors)


def test_the_generated_config_gives_the_plugin_its_secret_and_turns_the_cache_off(
    tmp_path: Path,
) -> None:
    orthanc = EmbeddedOrthanc(
        data_dir=tmp_path, plugin=ENTRY_SCRIPT,
        plugin_config=plugin_section(data_dir=tmp_path, web_viewer=True),
        extra_plugins=viewer_plugin_libraries(),
    )  # fmt: skip
    config = orthanc.config()
    token = config["XrayGateway"]["StoredFileToken"]
    assert len(token) >= 32 and token == orthanc.stored_file_token
    assert EmbeddedOrthanc(data_dir=tmp_path).stored_file_token == token  # kept, not regenerated
    assert config["XrayGateway"]["FailClosed"] is False
    assert config["DicomWeb"]["EnableMetadataCache"] is False
