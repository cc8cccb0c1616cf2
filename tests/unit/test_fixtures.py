"""Tests of the deterministic DICOM fixture generator in dicom_fixtures."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_fixtures import (
    CATALOGUE,
    UID_ROOT,
    Fixture,
    FixtureToolError,
    ct_series,
    dx_series,
    generate,
    large_multiframe,
)
from dicom_fixtures.__main__ import main
from dicom_fixtures.catalogue import source_dataset
from dicom_fixtures.series import DX_SERIES_STUDY_UID

DCMDUMP = shutil.which("dcmdump")
BY_NAME = {fixture.name: fixture for fixture in CATALOGUE}
#: DCMTK decompressor writing explicit VR little endian, per lossless syntax.
DECOMPRESSORS: dict[str, str] = {
    RLELossless: "dcmdrle",
    JPEGLosslessSV1: "dcmdjpeg",
    JPEGLSLossless: "dcmdjpls",
}


def sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_dcmdump_accepts(path: Path) -> None:
    """Fail unless DCMTK's dcmdump parses the whole file without a complaint."""
    assert DCMDUMP is not None, "DCMTK's dcmdump is not on PATH (Debian package 'dcmtk')"
    result = subprocess.run([DCMDUMP, "+M", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate the whole catalogue once for the module."""
    out = tmp_path_factory.mktemp("catalogue")
    paths = generate(out)
    assert [path.name for path in paths] == [f"{f.name}.dcm" for f in CATALOGUE]
    return out


def test_catalogue_covers_required_instances() -> None:
    syntaxes = {fixture.transfer_syntax_uid for fixture in CATALOGUE}
    assert {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
    } <= syntaxes
    ct = [f for f in CATALOGUE if f.name.startswith("ct_chest_") and f.name[-1].isdigit()]
    assert len(ct) == 3
    assert len({f.study_instance_uid for f in ct}) == 1
    assert len({f.name for f in CATALOGUE}) == len(CATALOGUE)
    assert len({f.sop_instance_uid for f in CATALOGUE}) == len(CATALOGUE)
    for fixture in CATALOGUE:
        for uid in (fixture.sop_instance_uid, fixture.study_instance_uid):
            assert uid.startswith(UID_ROOT)
            assert UID(uid).is_valid
        assert UID(fixture.sop_class_uid).is_valid
        assert UID(fixture.transfer_syntax_uid).is_transfer_syntax


def test_fixture_is_frozen() -> None:
    with pytest.raises(AttributeError):
        CATALOGUE[0].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("fixture", CATALOGUE, ids=lambda f: f.name)
def test_file_reads_back(catalogue_dir: Path, fixture: Fixture) -> None:
    path = catalogue_dir / f"{fixture.name}.dcm"
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == fixture.transfer_syntax_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == fixture.sop_instance_uid
    assert ds.SOPInstanceUID == fixture.sop_instance_uid
    assert ds.SOPClassUID == fixture.sop_class_uid
    assert ds.StudyInstanceUID == fixture.study_instance_uid
    assert ds.Manufacturer == "xray-gateway fixtures"
    assert ds.PatientID.startswith("FX-")
    assert ds.IssuerOfPatientID
    assert ds.BodyPartExamined
    assert ds.StudyDate and ds.SeriesNumber and ds.InstanceNumber
    assert "WindowCenter" in ds and "WindowWidth" in ds
    assert fixture.approx_bytes / 2 < path.stat().st_size < fixture.approx_bytes * 2


@pytest.mark.parametrize("fixture", CATALOGUE, ids=lambda f: f.name)
def test_dcmdump_accepts(catalogue_dir: Path, fixture: Fixture) -> None:
    assert_dcmdump_accepts(catalogue_dir / f"{fixture.name}.dcm")


def test_generation_is_deterministic(catalogue_dir: Path, tmp_path: Path) -> None:
    again = generate(tmp_path)
    for path in again:
        assert sha256(path) == sha256(catalogue_dir / path.name), path.name


def test_modality_specific_attributes(catalogue_dir: Path) -> None:
    ct = dcmread(catalogue_dir / "ct_chest_1.dcm")
    assert (ct.Modality, ct.Rows, ct.Columns, ct.BitsAllocated) == ("CT", 512, 512, 16)
    assert (ct.RescaleSlope, ct.RescaleIntercept) == (1, -1024)
    assert len(ct.PixelSpacing) == 2
    mr = dcmread(catalogue_dir / "mr_head.dcm")
    assert (mr.Modality, mr.Rows, mr.Columns) == ("MR", 256, 256)
    dx = dcmread(catalogue_dir / "dx_chest.dcm")
    assert (dx.Modality, dx.BodyPartExamined, dx.PresentationIntentType) == (
        "DX",
        "CHEST",
        "FOR PRESENTATION",
    )
    assert len(dx.PixelData) >= 10_000_000
    cr = dcmread(catalogue_dir / "cr_chest.dcm")
    assert (cr.Modality, cr.Rows, cr.Columns) == ("CR", 1024, 1024)
    sc = dcmread(catalogue_dir / "sc_multiframe.dcm")
    assert sc.NumberOfFrames == 10
    assert len(sc.PixelData) == 10 * sc.Rows * sc.Columns * 2
    us = dcmread(catalogue_dir / "us_abdomen_jpeg_baseline.dcm")
    assert (us.BitsAllocated, us.LossyImageCompression) == (8, "01")


@pytest.mark.parametrize(
    "name", [f.name for f in CATALOGUE if f.transfer_syntax_uid in DECOMPRESSORS]
)
def test_lossless_codecs_round_trip_with_dcmtk(
    catalogue_dir: Path, tmp_path: Path, name: str
) -> None:
    tool = DECOMPRESSORS[BY_NAME[name].transfer_syntax_uid]
    out = tmp_path / "decoded.dcm"
    subprocess.run([tool, str(catalogue_dir / f"{name}.dcm"), str(out)], check=True)
    assert dcmread(out).PixelData == source_dataset(name).PixelData


def test_jpeg_2000_round_trips_with_pydicom(catalogue_dir: Path) -> None:
    ds = dcmread(catalogue_dir / "cr_chest_j2k.dcm")
    assert ds.pixel_array.tobytes() == source_dataset("cr_chest_j2k").PixelData


def test_jpeg_baseline_is_close_to_source(catalogue_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "decoded.dcm"
    name = "us_abdomen_jpeg_baseline"
    subprocess.run(["dcmdjpeg", str(catalogue_dir / f"{name}.dcm"), str(out)], check=True)
    decoded, source = dcmread(out).PixelData, source_dataset(name).PixelData
    assert len(decoded) == len(source)
    assert sum(abs(a - b) for a, b in zip(decoded, source, strict=True)) / len(source) < 12


def test_native_syntaxes_keep_pixel_values(catalogue_dir: Path) -> None:
    deflated = dcmread(catalogue_dir / "ct_chest_deflated.dcm")
    assert deflated.PixelData == source_dataset("ct_chest_deflated").PixelData
    big = dcmread(catalogue_dir / "ct_chest_big_endian.dcm")
    source = source_dataset("ct_chest_big_endian").PixelData
    swapped = bytearray(len(source))
    swapped[::2], swapped[1::2] = source[1::2], source[::2]
    assert big.PixelData == swapped
    assert big.pixel_array.astype("<u2").tobytes() == source


def test_generate_subset_and_unknown_name(tmp_path: Path) -> None:
    paths = generate(tmp_path, ["mr_head", "mr_head"])
    assert paths == [tmp_path / "mr_head.dcm"]
    assert sorted(tmp_path.iterdir()) == paths
    with pytest.raises(KeyError, match="no_such_fixture"):
        generate(tmp_path, ["no_such_fixture"])


def test_missing_dcmtk_tool_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dicom_fixtures._codecs.shutil.which", lambda name: None)
    with pytest.raises(FixtureToolError, match="dcmcjpeg"):
        generate(tmp_path, ["mr_head", "ct_chest_jpeg_lossless"])
    assert list(tmp_path.iterdir()) == []


def test_missing_jpeg_2000_packages_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dicom_fixtures._codecs._importable", lambda module: module != "openjpeg")
    with pytest.raises(FixtureToolError, match="missing: pylibjpeg-openjpeg"):
        generate(tmp_path, ["cr_chest_j2k"])
    assert list(tmp_path.iterdir()) == []


def pixel_element_length(path: Path) -> int:
    """Return the length field of (7FE0,0010), checking the element's header."""
    with path.open("rb") as fp:
        dcmread(fp, stop_before_pixels=True)
        start = fp.tell()
        group, element, vr, length = struct.unpack("<HH2s2xI", fp.read(12))
    assert (group, element, vr) == (0x7FE0, 0x0010, b"OW")
    assert path.stat().st_size == start + 12 + length
    return int(length)


def test_large_multiframe_small_target(tmp_path: Path) -> None:
    path = large_multiframe(tmp_path / "large.dcm", 5_000_000, rows=512, cols=512)
    ds = dcmread(path, stop_before_pixels=True)
    assert ds.NumberOfFrames == 5_000_000 // (512 * 512 * 2)
    assert pixel_element_length(path) == ds.NumberOfFrames * ds.Rows * ds.Columns * 2
    assert_dcmdump_accepts(path)
    again = large_multiframe(tmp_path / "again.dcm", 5_000_000, rows=512, cols=512)
    assert sha256(again) == sha256(path)


def test_large_multiframe_rejects_oversize(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        large_multiframe(tmp_path / "huge.dcm", 5_000_000_000)


def test_ct_series(tmp_path: Path) -> None:
    prefix = UID_ROOT + "99."
    study_uid = UID_ROOT + "98"
    paths = ct_series(tmp_path, 3, rows=64, cols=64, study_uid=study_uid, prefix=prefix)
    assert [p.name for p in paths] == ["ct_0001.dcm", "ct_0002.dcm", "ct_0003.dcm"]
    for index, path in enumerate(paths, start=1):
        ds = dcmread(path)
        assert ds.SOPInstanceUID == f"{prefix}{index}"
        assert ds.SeriesInstanceUID == f"{prefix}0"
        assert ds.StudyInstanceUID == study_uid
        assert ds.InstanceNumber == index
        assert len(ds.PixelData) == 64 * 64 * 2
        assert_dcmdump_accepts(path)
    assert [
        sha256(p)
        for p in ct_series(
            tmp_path / "again", 3, rows=64, cols=64, study_uid=study_uid, prefix=prefix
        )
    ] == [sha256(p) for p in paths]
    with pytest.raises(ValueError, match="end with"):
        ct_series(tmp_path, 1, prefix=UID_ROOT + "99")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--only", "mr_head", "--ct", "2", "--large", "3000000"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(tmp_path / "mr_head.dcm"),
        str(tmp_path / "ct_series" / "ct_0001.dcm"),
        str(tmp_path / "ct_series" / "ct_0002.dcm"),
        str(tmp_path / "large_multiframe.dcm"),
    ]
    assert dcmread(tmp_path / "large_multiframe.dcm", stop_before_pixels=True).NumberOfFrames == 1


def test_dx_series(tmp_path: Path) -> None:
    paths = dx_series(tmp_path, count=3, rows=40, cols=30)
    datasets = [dcmread(p) for p in paths]
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert len({bytes(ds.PixelData) for ds in datasets}) == 3  # each image its own pixels
    assert {ds.Modality for ds in datasets} == {"DX"} and datasets[0].Rows == 40
    assert {ds.StudyInstanceUID for ds in datasets} == {DX_SERIES_STUDY_UID}
    assert_dcmdump_accepts(paths[0])
