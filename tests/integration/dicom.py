"""Helpers for driving the gateway as a DICOM peer: DCMTK by absolute path, pynetdicom raw sends."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

DCMTK = Path("/usr/bin")


def storescu(port: int, files: list[Path], *, aet: str = "MODALITY", called: str = "XRAYGW",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Send files with DCMTK's storescu, each in its own transfer syntax.

    storescu's -x options cover only some compressed syntaxes, so the files are grouped by
    transfer syntax and each group goes out with a generated association profile
    (``-xf``) proposing exactly that syntax for the group's SOP classes.
    """
    groups: dict[str, set[str]] = {}
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        groups.setdefault(syntax, set()).add(str(ds.file_meta.MediaStorageSOPClassUID))
        by_syntax.setdefault(syntax, []).append(path)
    outputs: list[str] = []
    code = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, (syntax, classes) in enumerate(sorted(groups.items())):
            config = Path(tmp) / f"profile{n}.cfg"
            contexts = "\n".join(
                f"PresentationContext{i} = {sop}\\TS" for i, sop in enumerate(sorted(classes), 1)
            )
            config.write_text(
                "[[TransferSyntaxes]]\n[TS]\nTransferSyntax1 = " + syntax + "\n"
                "[[PresentationContexts]]\n[PC]\n" + contexts + "\n"
                "[[Profiles]]\n[Default]\nPresentationContexts = PC\n"
            )
            result = subprocess.run(
                [str(DCMTK / "storescu"), "-aet", aet, "-aec", called, "-xf", str(config), "Default",
                 *extra, "127.0.0.1", str(port), *map(str, by_syntax[syntax])],
                capture_output=True, text=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"},
            )  # fmt: skip
            outputs.append(result.stdout + result.stderr)
            code = code or result.returncode
    return subprocess.CompletedProcess(["storescu"], code, "".join(outputs), "".join(outputs))


def dcmsend(
    port: int, files: list[Path], *, aet: str = "MODALITY", called: str = "XRAYGW"
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK's dcmsend: each file in its own transfer syntax."""
    return subprocess.run(
        [str(DCMTK / "dcmsend"), "-aet", aet, "-aec", called, "--no-halt", "--no-uid-checks",
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def echo(port: int, *, called: str = "XRAYGW") -> bool:
    """C-ECHO with DCMTK's echoscu."""
    result = subprocess.run(
        [str(DCMTK / "echoscu"), "-aec", called, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    return result.returncode == 0


def echoscu(
    port: int, *options: str, aet: str = "ECHOSCU", called: str = "XRAYGW"
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK's echoscu and extra ``options`` (e.g. ``+tls KEY CERT``)."""
    return subprocess.run(
        [str(DCMTK / "echoscu"), *options, "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def send_raw(port: int, path: Path, *, sop_class: str, transfer_syntax: str) -> Dataset | None:
    """Send a Part-10 file's dataset bytes as they are (no parsing), return the status."""
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(sop_class, transfer_syntax)
    ae.add_requested_context(Verification)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="XRAYGW")
        assert assoc.is_established
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # hostile test files carry invalid UIDs on purpose
                result: Dataset | None = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return result


def dcmsend_status(port: int, path: Path, *, called: str = "XRAYGW") -> int:
    """Send one file with DCMTK's dcmsend (no UID checks) and return the DIMSE status."""
    result = subprocess.run(
        [str(DCMTK / "dcmsend"), "-d", "--no-uid-checks", "-aec", called, "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    found = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return int(found.group(1), 16)
