"""Who reads an image through Orthanc, and by which path (pure; fed by the HTTP filter).

The storage area's ``read`` sees every read of a DICOM file but not who asked; Orthanc's
incoming-HTTP-request filter sees who asked but not what will be read. Orthanc runs a
request's filter and its handler (and the storage reads the handler makes) on one thread,
so the filter notes the request's reader under that thread's id and the storage area
looks it up (:class:`Readers`). What each path gives:

- REST (``/instances/{id}/file``, ``/preview``, ``/frames``, ``/tags`` …), the Explorer,
  the Web Viewer, WADO-URI (``/wado``) and DICOMweb (``/dicom-web/…``): the Orthanc user
  from HTTP basic authentication (``orthanc-user``); with authentication off, only the
  remote address (``address``).
- C-GET and C-MOVE, and reads made by Orthanc's jobs (archives, transfers): no HTTP
  request and nothing in the Python plugin SDK names the calling AE to the storage area,
  so the entry says ``unattributed`` with route ``dicom-or-job``; its time, instance and
  verdict are still recorded.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from typing import Any

UNATTRIBUTED = "unattributed"
DICOM_OR_JOB = "dicom-or-job"
_ROUTES = (
    ("/web-viewer/", "viewer"),
    ("/wado", "wado"),
    ("/dicom-web/", "dicomweb"),
    ("/app/", "explorer"),
    ("/xray/", "xray"),
)


@dataclass
class Reader:
    """The reader of one HTTP request, and the instances already journaled for it."""

    who: str
    who_kind: str
    route: str
    journaled: set[str] = field(default_factory=set)


def route_of(uri: str) -> str:
    """The access path an URI takes: ``viewer``, ``wado``, ``dicomweb``, … else ``rest``."""
    for prefix, route in _ROUTES:
        if uri.startswith(prefix):
            return route
    return "rest"


def reader_of(uri: str, request: dict[str, Any]) -> Reader:
    """Who makes this HTTP request: the basic-auth user, else the remote address."""
    headers = request.get("headers") or {}
    user = basic_user(str(headers.get("authorization", "")))
    if user:
        return Reader(user, "orthanc-user", route_of(uri))
    address = str(request.get("ip") or "")
    if address:
        return Reader(address, "address", route_of(uri))
    return Reader(UNATTRIBUTED, UNATTRIBUTED, route_of(uri))


def basic_user(authorization: str) -> str | None:
    """The user name of an HTTP ``Basic`` credential (the password is never kept)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


class _Request:
    """What the filter kept of a request until its first storage read names the reader.

    Its ``repr`` leaves the credential out.
    """

    __slots__ = ("authorization", "ip", "uri")

    def __init__(self, uri: str, request: dict[str, Any]) -> None:
        self.uri = uri
        self.authorization = str((request.get("headers") or {}).get("authorization", ""))
        self.ip = request.get("ip")

    def __repr__(self) -> str:
        return f"_Request({self.uri!r})"

    def reader(self) -> Reader:
        """:func:`reader_of` this request."""
        return reader_of(
            self.uri, {"headers": {"authorization": self.authorization}, "ip": self.ip}
        )


class Readers:
    """The reader of the HTTP request each thread is serving (by OS thread id).

    Keyed by :func:`threading.get_ident`, not a ``threading.local``: Orthanc may give each
    callback a fresh Python thread state, which would drop thread-local data between the
    filter and the storage read. A thread that never ran the filter (DICOM, jobs) has no
    reader: :meth:`current` is None.

    The filter runs for every request, most of which read no DICOM file (a viewer's
    rendered frame comes from Orthanc's decoded-instance cache, the Explorer's pages from
    the index): it only keeps the request's URI, credential and address, and who the
    reader is (the basic-auth user decoded) is worked out on the request's first storage
    read. The credential is dropped then, or at the thread's next request.
    """

    def __init__(self) -> None:
        self._by_thread: dict[int, Reader | _Request] = {}

    def begin(self, uri: str, request: dict[str, Any]) -> None:
        """A new HTTP request on this thread (the filter's call)."""
        self._by_thread[threading.get_ident()] = _Request(uri, request)

    def current(self) -> Reader | None:
        thread = threading.get_ident()
        noted = self._by_thread.get(thread)
        if isinstance(noted, _Request):
            noted = self._by_thread[thread] = noted.reader()
        return noted

    def first_read(self, sop_instance_uid: str) -> tuple[str, str, str] | None:
        """(who, who_kind, route) for a read of this instance, or None when this request has
        journaled it already (the viewer's check and Orthanc's decode are one access)."""
        reader = self.current()
        if reader is None:
            return UNATTRIBUTED, UNATTRIBUTED, DICOM_OR_JOB
        if sop_instance_uid in reader.journaled:
            return None
        reader.journaled.add(sop_instance_uid)
        return reader.who, reader.who_kind, reader.route
