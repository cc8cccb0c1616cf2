"""Test helper: a real embedded Orthanc on free loopback ports in a temporary directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.pacs.client import Pacs
from gateway.pacs.embedded import EmbeddedOrthanc
from gateway.procs import free_port


class TestOrthanc:
    """Start an :class:`EmbeddedOrthanc` on free ports; stop it and remove its files on exit.

    ``with TestOrthanc() as pacs_server: pacs_server.pacs.store(...)``. Give ``data_dir``
    to keep the files (e.g. under pytest's ``tmp_path``); otherwise a temporary directory
    is made and removed.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        plugin: Path | None = None,
        plugin_config: dict[str, Any] | None = None,
        extra_plugins: Sequence[Path] = (),
        extra_config: dict[str, Any] | None = None,
        timeout: float = 30.0,
        index_url: str | None = None,
        storage_dir: Path | None = None,
        aet: str = "TESTPACS",
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="xray-orthanc-"))
        self.orthanc = EmbeddedOrthanc(
            data_dir=self.data_dir,
            http_port=free_port(),
            dicom_port=free_port(),
            aet=aet,
            plugin=plugin,
            plugin_config=plugin_config,
            extra_plugins=extra_plugins,
            extra_config=extra_config,
            index_url=index_url,
            storage_dir=storage_dir,
        )
        self.timeout = timeout
        self.pacs = Pacs.from_embedded(self.orthanc, timeout=timeout)

    def start(self) -> TestOrthanc:
        """Start Orthanc and wait until it answers."""
        self.orthanc.start()
        return self

    def stop(self) -> None:
        """Stop Orthanc (by pid); remove the data dir if this helper made it."""
        self.orthanc.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> TestOrthanc:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        """Orthanc's log so far (for assertions and failure messages)."""
        path = self.orthanc.log_path
        return path.read_text(errors="replace") if path.exists() else ""
