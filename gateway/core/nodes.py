"""Gateway nodes sharing one index: node ids and the worker ids they qualify (pure)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SEPARATOR = "/"
"""Between a node id and a worker's local id in a claim (``node-a/up-1``); never in a node id."""

_HOST_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def default_node_id(host: str, data_dir: Path) -> str:
    """``<host>-<6 hex>``: the host name (up to 24 characters) and a digest of the data
    dir's absolute path, so one node keeps its id across restarts while two nodes on one
    host (two data dirs) differ."""
    name = _HOST_CHARS.sub("-", host).strip("-.")[:24] or "node"
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]
    return f"{name}-{digest}"


def worker_id(node: str, local: str) -> str:
    """The id a worker claims rows under: its node's id, then its id on that node."""
    return f"{node}{SEPARATOR}{local}"


def node_of(worker: str) -> str:
    """The node a claim's worker id belongs to (``""`` for a bare id from before nodes)."""
    node, sep, _ = worker.rpartition(SEPARATOR)
    return node if sep else ""
