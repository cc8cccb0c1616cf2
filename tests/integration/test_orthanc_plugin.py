"""The integrity plugin inside a real Orthanc 1.10 (Debian), with the Web Viewer and DICOMweb.

Each tamper class is made for real on Orthanc's stored file, then every way an image
leaves the PACS is tried: REST, rendered previews and frames, WADO-URI, DICOMweb, C-GET,
Orthanc Explorer and the Web Viewer in headless Chromium.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread

from gateway.core.fingerprint import dataset_offset, fingerprint_bytes
from gateway.errors import ConfigError
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.embedded import EmbeddedOrthanc, python_plugin_library, viewer_plugin_libraries
from gateway.procs import free_port
from tests.integration import browser
from tests.integration.dicom import DCMTK
from tests.integration.pacs import TestOrthanc
from tests.integration.plugin_helpers import (
    Study,
    alerts,
    edit_patient_name,
    flip_pixel_byte,
    integrity,
    make_study,
    record,
    store,
    stored_file,
)

pytestmark = pytest.mark.integration

GETSCU_AET = "XRAYGETSCU"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestOrthanc]:
    data_dir = tmp_path_factory.mktemp("plugin-pacs")
    viewers = viewer_plugin_libraries()
    assert len(viewers) == 2, "orthanc-webviewer and orthanc-dicomweb are in APT_PACKAGES"
    server = TestOrthanc(
        data_dir=data_dir,
        plugin=ENTRY_SCRIPT,
        plugin_config=plugin_section(data_dir=data_dir, web_viewer=True),
        extra_plugins=viewers,
        extra_config={"DicomModalities": {"getscu": [GETSCU_AET, "127.0.0.1", free_port()]}},
    )
    with server:
        yield server


@pytest.fixture
def auth(pacs: TestOrthanc) -> tuple[str, str]:
    return pacs.orthanc.credentials


@pytest.fixture
def recorded(pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path) -> tuple[Study, list[str]]:
    """Three slices recorded in the gateway's index, then stored in Orthanc."""
    study = make_study(tmp_path, count=3)
    record(pacs.data_dir / "index.sqlite", study.files)
    return study, store(pacs.orthanc.url, auth, study.files)


def get(pacs: TestOrthanc, auth: tuple[str, str], path: str) -> requests.Response:
    return requests.get(f"{pacs.orthanc.url}{path}", auth=auth, timeout=60)


def uids(pacs: TestOrthanc, auth: tuple[str, str], orthanc_id: str) -> tuple[str, str, str]:
    instance = get(pacs, auth, f"/instances/{orthanc_id}").json()
    series = get(pacs, auth, f"/series/{instance['ParentSeries']}").json()
    study = get(pacs, auth, f"/studies/{series['ParentStudy']}").json()
    return (
        study["MainDicomTags"]["StudyInstanceUID"],
        series["MainDicomTags"]["SeriesInstanceUID"],
        instance["MainDicomTags"]["SOPInstanceUID"],
    )


def retrievals(
    pacs: TestOrthanc, auth: tuple[str, str], orthanc_id: str
) -> dict[str, requests.Response]:
    """Every HTTP way to get an instance's bytes or pixels out of Orthanc."""
    study, series, sop = uids(pacs, auth, orthanc_id)
    web = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    paths = {
        "rest file": f"/instances/{orthanc_id}/file",
        "rest preview": f"/instances/{orthanc_id}/preview",
        "rest rendered frame": f"/instances/{orthanc_id}/frames/0/rendered",
        "rest raw frame": f"/instances/{orthanc_id}/frames/0/raw",
        "rest tags": f"/instances/{orthanc_id}/tags",
        "wado-uri dicom": wado + "&contentType=application/dicom",
        "wado-uri jpeg": wado,
        "dicomweb instance": web,
        "dicomweb frame": web + "/frames/1",
        "dicomweb rendered": web + "/rendered",
        "web viewer image": f"/web-viewer/instances/jpeg95-{orthanc_id}_0",
    }
    return {name: get(pacs, auth, path) for name, path in paths.items()}


def test_the_config_loads_the_python_plugin_first_then_the_viewers(tmp_path: Path) -> None:
    section = plugin_section(data_dir=tmp_path, web_viewer=True)
    orthanc = EmbeddedOrthanc(
        data_dir=tmp_path, plugin=ENTRY_SCRIPT, plugin_config=section,
        extra_plugins=viewer_plugin_libraries(),
    )  # fmt: skip
    config = orthanc.config()
    # first, so that its /web-viewer/series/ route wins over the viewer's own
    assert config["Plugins"][0] == str(python_plugin_library())
    assert [Path(p).name.split(".")[0] for p in config["Plugins"][1:]] == [
        "libOrthancWebViewer", "libOrthancDicomWeb",
    ]  # fmt: skip
    assert config["XrayGateway"] == {**section, "StoredFileToken": orthanc.stored_file_token}
    assert Path(config["WebViewer"]["CachePath"]).is_relative_to(tmp_path.resolve())
    assert config["DicomWeb"]["Enable"] is True
    assert config["MaximumStorageCacheSize"] == 0
    with pytest.raises(ConfigError, match="XrayGateway"):
        EmbeddedOrthanc(data_dir=tmp_path, extra_config={"XrayGateway": {}})
    with pytest.raises(ConfigError, match="plugin script"):
        EmbeddedOrthanc(data_dir=tmp_path, extra_plugins=viewer_plugin_libraries())


# --- intact and tampered ----------------------------------------------------------------


def test_intact_instances_are_served_everywhere(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    for path, orthanc_id in zip(study.files, ids, strict=True):
        for name, reply in retrievals(pacs, auth, orthanc_id).items():
            assert reply.status_code == 200, (name, reply.status_code, reply.text[:300])
        served = get(pacs, auth, f"/instances/{orthanc_id}/file").content
        assert served == path.read_bytes()
        verdict = integrity(pacs.orthanc.url, auth, "instances", orthanc_id)
        assert verdict["status"] == "intact" and verdict["served"] is True
    assert not [a for a in alerts(pacs.data_dir) if a["sop_instance_uid"] in study.sop_uids]


@pytest.mark.parametrize("tamper", ["pixels", "header"])
def test_a_tampered_instance_is_refused_on_every_path(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]], tamper: str
) -> None:
    study, ids = recorded
    victim, victim_uid = ids[1], study.sop_uids[1]
    path = stored_file(pacs.data_dir, pacs.orthanc.url, auth, victim)
    original = path.read_bytes()
    if tamper == "pixels":
        flip_pixel_byte(path)
    else:
        edit_patient_name(path, "TAMPERED^NAME")
    altered = path.read_bytes()
    assert altered != original

    for name, reply in retrievals(pacs, auth, victim).items():
        assert reply.status_code >= 400, (name, reply.status_code)
        assert altered not in reply.content and b"TAMPERED" not in reply.content, name
    # the neighbours stay available
    for other in (ids[0], ids[2]):
        assert get(pacs, auth, f"/instances/{other}/file").status_code == 200
        assert get(pacs, auth, f"/instances/{other}/preview").status_code == 200

    verdict = integrity(pacs.orthanc.url, auth, "instances", victim)
    assert verdict["status"] == "tampered" and verdict["served"] is False
    assert verdict["changed"] == tamper
    assert "altered" in str(verdict["headline"])
    assert verdict["digest_now"] == fingerprint_bytes(altered).digest.hex()
    recorded_digest = fingerprint_bytes(original).digest.hex()
    assert verdict["recorded"]["digest"] == recorded_digest  # type: ignore[index]

    found = alerts(pacs.data_dir, sop_instance_uid=victim_uid)
    assert found and {a["kind"] for a in found} == {"tampered"}
    assert found[0]["source"] == "orthanc-plugin" and found[0]["orthanc_id"] == victim
    assert recorded_digest in found[0]["detail"] and "TAMPERED" not in found[0]["detail"]

    # repeated refusals of the same altered copy are one incident, not one alert per GET
    for _ in range(3):
        get(pacs, auth, f"/instances/{victim}/file")
    assert len(alerts(pacs.data_dir, sop_instance_uid=victim_uid)) == len(found)

    # putting the recorded bytes back makes it intact and served again
    path.write_bytes(original)
    assert get(pacs, auth, f"/instances/{victim}/file").content == original
    assert integrity(pacs.orthanc.url, auth, "instances", victim)["status"] == "intact"


def test_the_series_zip_does_not_carry_the_tampered_file(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[0]))
    series = get(pacs, auth, f"/instances/{ids[0]}").json()["ParentSeries"]
    reply = get(pacs, auth, f"/series/{series}/archive")
    assert reply.status_code >= 400 or study.files[0].read_bytes()[-4096:] not in reply.content


def test_stored_file_route_returns_the_bytes_as_stored_with_the_verdict(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    gateway = {"X-Xray-Stored-File-Token": pacs.orthanc.stored_file_token}

    def stored(orthanc_id: str) -> requests.Response:
        url = f"{pacs.orthanc.url}/xray/instances/{orthanc_id}/stored-file"
        return requests.get(url, auth=auth, headers=gateway, timeout=60)

    intact = stored(ids[0])
    assert intact.status_code == 200 and intact.content == study.files[0].read_bytes()
    assert intact.headers["X-Xray-Status"] == "intact"
    assert intact.headers["Content-Type"] == "application/dicom"

    path = stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[2])
    flip_pixel_byte(path)
    tampered = stored(ids[2])
    assert tampered.status_code == 200 and tampered.content == path.read_bytes()
    assert tampered.headers["X-Xray-Status"] == "tampered"
    assert (
        tampered.headers["X-Xray-Dataset-Digest"]
        == fingerprint_bytes(tampered.content).digest.hex()
    )
    # the route sits behind Orthanc's authentication like the rest
    assert (
        requests.get(
            f"{pacs.orthanc.url}/xray/instances/{ids[2]}/stored-file", timeout=30
        ).status_code
        == 401
    )
    assert stored("00000000-00000000-00000000-00000000-00000000").status_code == 404


def test_a_rendered_image_from_orthancs_cache_is_the_verified_one(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    """Orthanc 1.10 keeps recently decoded instances in memory for rendering (not
    configurable): a file altered after it was viewed is either refused or shown as it
    was when verified, never with the altered pixels."""
    _, ids = recorded
    before = get(pacs, auth, f"/instances/{ids[0]}/frames/0/rendered")
    assert before.status_code == 200
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[0]))
    after = get(pacs, auth, f"/instances/{ids[0]}/frames/0/rendered")
    assert after.status_code >= 400 or after.content == before.content
    assert get(pacs, auth, f"/instances/{ids[0]}/file").status_code >= 400


# --- unregistered ------------------------------------------------------------------------


def test_an_instance_posted_straight_to_orthanc_is_flagged_unregistered(
    pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=1)
    (orthanc_id,) = store(pacs.orthanc.url, auth, study.files)
    (uid,) = study.sop_uids
    # flagged on arrival, before anybody opened it
    arrival = alerts(pacs.data_dir, sop_instance_uid=uid)
    assert [a["kind"] for a in arrival] == ["unregistered"]
    assert arrival[0]["orthanc_id"] == orthanc_id

    # served (clinical access is not lost), with the warning where a radiologist looks
    assert get(pacs, auth, f"/instances/{orthanc_id}/file").content == study.files[0].read_bytes()
    assert get(pacs, auth, f"/instances/{orthanc_id}/preview").status_code == 200
    verdict = integrity(pacs.orthanc.url, auth, "instances", orthanc_id)
    assert verdict["status"] == "unregistered" and verdict["served"] is True
    assert "did not pass through the xray gateway" in str(verdict["headline"])
    assert len(alerts(pacs.data_dir, sop_instance_uid=uid)) == 1  # one alert, not one per read

    # an unregistered copy that changes after it arrived is refused
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, orthanc_id))
    assert get(pacs, auth, f"/instances/{orthanc_id}/file").status_code >= 400
    assert integrity(pacs.orthanc.url, auth, "instances", orthanc_id)["status"] == "tampered"


def test_study_integrity_summarises_its_instances(
    pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=4)
    record(pacs.data_dir / "index.sqlite", study.files[:3])  # the fourth goes around
    ids = store(pacs.orthanc.url, auth, study.files)
    series_id = get(pacs, auth, f"/instances/{ids[0]}").json()["ParentSeries"]
    study_id = get(pacs, auth, f"/series/{series_id}").json()["ParentStudy"]
    assert integrity(pacs.orthanc.url, auth, "studies", study_id)["status"] == "unregistered"
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[1]))
    summary = integrity(pacs.orthanc.url, auth, "studies", study_id)
    assert summary["status"] == "tampered" and summary["served"] is False
    assert summary["counts"] == {"tampered": 1, "unregistered": 1, "intact": 2}
    assert "1 of 4 images" in str(summary["headline"])
    by_id = {item["id"]: item["status"] for item in summary["instances"]}  # type: ignore[attr-defined]
    assert by_id == {ids[0]: "intact", ids[1]: "tampered", ids[2]: "intact", ids[3]: "unregistered"}


# --- restart, C-GET ---------------------------------------------------------------------


def test_the_attachment_catalogue_survives_a_restart(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]]
) -> None:
    study, ids = recorded
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[0]))
    pacs.orthanc.stop()
    pacs.orthanc.start()
    assert get(pacs, auth, f"/instances/{ids[0]}/file").status_code >= 400
    assert get(pacs, auth, f"/instances/{ids[1]}/file").content == study.files[1].read_bytes()


def test_after_a_restart_the_viewer_path_refuses_altered_files_on_their_first_read(
    pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path
) -> None:
    """A viewer's first look at a study after Orthanc starts: each slice's preview reads
    its file once (where its dataset starts comes from the catalogue, not a parse), and a
    rendered frame comes from Orthanc's decoded copy. A file whose File Meta now declares
    another transfer syntax, and one with a flipped pixel byte, are refused on the preview
    and on the rendered frame; the intact one is served."""
    study = make_study(tmp_path, count=3)
    record(pacs.data_dir / "index.sqlite", study.files, with_syntax=True)
    ids = store(pacs.orthanc.url, auth, study.files)
    meta_edited = stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[1])
    data = meta_edited.read_bytes()
    syntax_at = data.index(b"1.2.840.10008.1.2.1\x00")
    assert syntax_at < dataset_offset(io.BytesIO(data))[0]  # in the File Meta
    meta_edited.write_bytes(data[:syntax_at] + b"1.2.840.10008.1.2.2\x00" + data[syntax_at + 20 :])
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[2]))
    pacs.orthanc.stop()
    pacs.orthanc.start()
    for orthanc_id, served in ((ids[0], True), (ids[1], False), (ids[2], False)):
        for route in ("preview", "frames/0/rendered"):
            reply = get(pacs, auth, f"/instances/{orthanc_id}/{route}")
            assert (reply.status_code == 200) is served, (orthanc_id, route, reply.status_code)
    assert integrity(pacs.orthanc.url, auth, "instances", ids[1])["status"] == "tampered"
    assert integrity(pacs.orthanc.url, auth, "instances", ids[2])["status"] == "tampered"
    assert get(pacs, auth, f"/instances/{ids[0]}/file").content == study.files[0].read_bytes()


def test_getscu_does_not_deliver_the_tampered_instance(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]], tmp_path: Path
) -> None:
    study, ids = recorded
    victim = stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[1])
    flip_pixel_byte(victim)
    out = tmp_path / "retrieved"
    out.mkdir()
    result = subprocess.run(
        [str(DCMTK / "getscu"), "-aet", GETSCU_AET, "-aec", "TESTPACS",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
         "-od", str(out), "127.0.0.1", str(pacs.orthanc.dicom_port)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    received = {
        str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in out.iterdir()
    }
    # Orthanc 1.10 ends the C-GET at the first failed sub-operation: the instances before
    # it in Orthanc's order arrive, the tampered one never does, and the SCU hears why
    assert study.sop_uids[1] not in received, result.stdout + result.stderr
    assert set(received) <= {study.sop_uids[0], study.sop_uids[2]}
    assert "Failed" in result.stdout + result.stderr
    tampered_pixels = hashlib.sha256(victim.read_bytes()[-2048:]).digest()
    for path in received.values():
        assert hashlib.sha256(path.read_bytes()[-2048:]).digest() != tampered_pixels
    # the delivered ones are the recorded bytes
    for uid, path in received.items():
        original = study.files[study.sop_uids.index(uid)]
        assert (
            fingerprint_bytes(path.read_bytes()).digest
            == fingerprint_bytes(original.read_bytes()).digest
        )


# --- what the radiologist sees ----------------------------------------------------------


def grey_fraction(png: Path, box: tuple[int, int, int, int]) -> float:
    """Share of pixels in ``box`` that are neither near-black nor near-white."""
    pixels = np.asarray(Image.open(png).convert("L").crop(box))
    return float(((pixels > 25) & (pixels < 230)).mean())


def red_pixels(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 150) & (g < 40) & (b < 70)).sum())


def test_orthanc_explorer_shows_the_refusal(
    pacs: TestOrthanc, auth: tuple[str, str], recorded: tuple[Study, list[str]], tmp_path: Path
) -> None:
    _, ids = recorded
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, ids[1]))
    base = browser.with_login(pacs.orthanc.url, *auth) + "/app/explorer.html"

    dom = browser.dump_dom(f"{base}#instance?uuid={ids[1]}")
    assert 'data-xray-status="tampered"' in dom
    assert "Refused: this image was altered after it was recorded." in dom
    assert "TAMPERED" not in dom
    shot = browser.screenshot(f"{base}#instance?uuid={ids[1]}", tmp_path / "explorer-tampered.png")
    assert shot.stat().st_size > 20_000
    assert red_pixels(shot) > 20_000  # the red refusal banner across the page

    intact_dom = browser.dump_dom(f"{base}#instance?uuid={ids[0]}")
    assert 'data-xray-status="intact"' in intact_dom and "Refused" not in intact_dom
    intact_shot = browser.screenshot(
        f"{base}#instance?uuid={ids[0]}", tmp_path / "explorer-intact.png"
    )
    assert red_pixels(intact_shot) < 1_000

    series = get(pacs, auth, f"/instances/{ids[1]}").json()["ParentSeries"]
    series_dom = browser.dump_dom(f"{base}#series?uuid={series}")
    assert "Refused: 1 of 3 images in this series were altered or are missing." in series_dom
    assert f"#instance?uuid={ids[1]}" in series_dom  # the banner links the refused image


def test_the_web_viewer_shows_refused_in_place_of_the_altered_slice(
    pacs: TestOrthanc, auth: tuple[str, str], tmp_path: Path
) -> None:
    study = make_study(tmp_path, count=3)
    record(pacs.data_dir / "index.sqlite", study.files)
    ids = store(pacs.orthanc.url, auth, study.files)
    series = get(pacs, auth, f"/instances/{ids[0]}").json()["ParentSeries"]
    viewer = (
        browser.with_login(pacs.orthanc.url, *auth) + f"/web-viewer/app/viewer.html?series={series}"
    )
    centre = (300, 200, 500, 400)  # the image area of an 800x600 window

    intact = browser.screenshot(viewer, tmp_path / "viewer-intact.png", size=(800, 600))
    assert grey_fraction(intact, centre) > 0.3  # a CT slice: grey levels everywhere

    # the viewer opens on the first slice of Orthanc's slice order: alter that one
    first = get(pacs, auth, f"/series/{series}/ordered-slices").json()["SlicesShort"][0][0]
    flip_pixel_byte(stored_file(pacs.data_dir, pacs.orthanc.url, auth, first))

    answer = get(pacs, auth, f"/web-viewer/series/{series}").json()
    assert answer["Slices"][0] == f"xray-refused-{first}_0" and len(answer["Slices"]) == 3
    dom = browser.dump_dom(viewer)
    assert "xray-gateway: Refused: 1 of 3 images in this series were altered" in dom
    refused = browser.screenshot(viewer, tmp_path / "viewer-refused.png", size=(800, 600))
    assert grey_fraction(refused, centre) < 0.1  # "REFUSED" in white on black, not the CT
    assert Image.open(refused).convert("L").crop(centre).getextrema()[1] > 200  # the letters


def test_the_refusal_picture_is_what_the_viewer_gets(
    pacs: TestOrthanc, auth: tuple[str, str]
) -> None:
    reply = get(
        pacs,
        auth,
        "/web-viewer/instances/jpeg95-xray-refused-00000000-00000000-00000000-00000000-00000000_0",
    )
    image = json.loads(reply.text)
    assert image["Orthanc"]["Compression"] == "Deflate" and image["width"] == 512
