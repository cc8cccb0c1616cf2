"""What ``up`` refuses about several listener processes, before it starts anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.stack import Stack


def test_several_listeners_refuse_a_port_something_listens_on(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second gateway share the port without a word."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            data_dir=tmp_path / "var", listeners=2, dicom_host="127.0.0.1", dicom_port=port
        )
        with pytest.raises(ConfigError, match=f"DICOM port {port} is already in use"):
            Stack(settings).start()
    assert not (tmp_path / "var").exists()  # nothing was started


def test_several_listeners_refuse_the_in_process_pipeline(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", listeners=2, inprocess_pipeline=True)
    with pytest.raises(ConfigError, match="needs the pipeline in worker processes"):
        Stack(settings).start()
    assert not (tmp_path / "var").exists()
