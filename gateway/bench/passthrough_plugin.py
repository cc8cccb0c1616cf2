"""The retrieval bench's floor: a Python storage area that checks nothing (Orthanc runs it).

The same ``ab/cd/uuid`` files and the same two Python callbacks per request as the
integrity plugin (the storage area's ``read`` and the incoming-HTTP-request filter), each
doing nothing but the file I/O and ``return True``. What Orthanc's Python plugin costs
by itself, before any check: :func:`gateway.bench.retrieval.retrieval_overhead` with
``floor=True`` measures an Orthanc running this script beside the other two.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orthanc

_root = json.loads(orthanc.GetConfiguration())["StorageDirectory"]


def _path(uuid: str) -> str:
    return os.path.join(_root, uuid[0:2], uuid[2:4], uuid)


def create(uuid: str, content_type: int, data: bytes) -> None:
    path = _path(uuid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)


def read(uuid: str, content_type: int) -> bytes:
    with open(_path(uuid), "rb", buffering=0) as stream:
        return stream.read()


def remove(uuid: str, content_type: int) -> None:
    os.unlink(_path(uuid))


def http_filter(uri: str, **request: Any) -> bool:
    return True


orthanc.RegisterStorageArea(create, read, remove)
orthanc.RegisterIncomingHttpRequestFilter(http_filter)
