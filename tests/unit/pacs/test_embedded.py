"""The embedded Orthanc's generated config: its own index on PostgreSQL, a shared storage dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.orthanc_plugin import ENTRY_SCRIPT, plugin_section
from gateway.pacs.embedded import EmbeddedOrthanc, postgresql_index_library

URL = "postgresql://orthanc:secret@db:5432/orthanc"


def test_without_an_index_url_orthanc_keeps_its_sqlite_index_and_own_storage(
    tmp_path: Path,
) -> None:
    config = EmbeddedOrthanc(data_dir=tmp_path).config()
    assert "PostgreSQL" not in config and "Plugins" not in config
    assert config["StorageDirectory"] == str((tmp_path / "orthanc" / "storage").resolve())


def test_an_index_url_puts_the_index_on_postgresql_for_several_nodes(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "storage"
    orthanc = EmbeddedOrthanc(
        data_dir=tmp_path / "node1", plugin=ENTRY_SCRIPT,
        plugin_config=plugin_section(data_dir=tmp_path), index_url=URL, storage_dir=shared,
    )  # fmt: skip
    config = orthanc.config()

    section = config["PostgreSQL"]
    assert section["EnableIndex"] is True
    assert section["EnableStorage"] is False  # the integrity plugin stays the storage area
    assert section["Lock"] is False  # several nodes on one index
    assert section["ConnectionUri"] == URL
    assert config["Plugins"][0] == str(postgresql_index_library())
    assert any("Python" in plugin for plugin in config["Plugins"][1:])
    assert config["StorageDirectory"] == str(shared.resolve())


def test_the_postgresql_section_is_not_for_extra_config_and_the_url_is_checked(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        EmbeddedOrthanc(data_dir=tmp_path, extra_config={"PostgreSQL": {"EnableIndex": True}})
    with pytest.raises(ConfigError, match="postgresql://"):
        EmbeddedOrthanc(data_dir=tmp_path, index_url="mysql://orthanc@db/orthanc")
