"""Test helper: several Orthanc nodes on one PostgreSQL index and one storage directory,
each with the integrity plugin (the issue #14 topology), on free ports.

``OrthancNodes.start(root, orthanc_index=url, plugin_configs={"a": section, ...})`` starts
one node per entry; each section is ``plugin_section(...)`` for that node (its own
``DataDir`` for alerts, and ``index_url=`` for the evidence through the view, or the
gateway's data dir for its SQLite file). ``stop()`` stops every node it started, by pid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gateway.orthanc_plugin import ENTRY_SCRIPT
from tests.integration.pacs import TestOrthanc


@dataclass
class OrthancNodes:
    """Running nodes by name, and the storage directory they share."""

    nodes: dict[str, TestOrthanc]
    storage: Path

    @classmethod
    def start(
        cls, root: Path, *, orthanc_index: str, plugin_configs: Mapping[str, dict[str, Any]]
    ) -> OrthancNodes:
        """Start one node per entry of ``plugin_configs`` (Orthanc's data in ``root/<name>``)."""
        started = cls(nodes={}, storage=root / "shared" / "storage")
        try:
            for name, section in plugin_configs.items():
                node = TestOrthanc(
                    data_dir=root / name,
                    aet=f"PACS{name.upper()}"[:16],
                    plugin=ENTRY_SCRIPT,
                    plugin_config=section,
                    index_url=orthanc_index,
                    storage_dir=started.storage,
                )
                started.nodes[name] = node
                node.start()
        except BaseException:
            started.stop()
            raise
        return started

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def url(self, name: str) -> str:
        return self.nodes[name].orthanc.url

    def auth(self, name: str) -> tuple[str, str]:
        return self.nodes[name].orthanc.credentials

    def stored_path(self, orthanc_id: str) -> Path:
        """The file of ``orthanc_id`` in the shared storage (Orthanc's ``ab/cd/uuid``)."""
        name = next(iter(self.nodes))
        info = requests.get(
            f"{self.url(name)}/instances/{orthanc_id}/attachments/dicom/info",
            auth=self.auth(name), timeout=30,
        ).json()  # fmt: skip
        uuid = str(info["Uuid"])
        return self.storage / uuid[:2] / uuid[2:4] / uuid
