"""The Orthanc client: forward Part-10 files over REST and read them back (orthanc-rest-client)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar, cast
from urllib.parse import urlparse

import apiron
import requests
from orthanc_rest_client import Orthanc
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth
from urllib3.util.retry import Retry

from gateway.core.fingerprint import Fingerprint, fingerprint
from gateway.errors import (
    DatasetUnreadable,
    InstanceMissing,
    PacsRejected,
    PacsUnavailable,
)
from gateway.redact import redact_text, redact_url, userinfo

if TYPE_CHECKING:
    from gateway.pacs.embedded import EmbeddedOrthanc

log = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 1 << 20
# Orthanc's copy is fetched to compare digests; small files stay in memory, big ones spill.
SPOOL_IN_MEMORY = 8 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# 4xx answers that are about the file itself; any other 4xx (401, 403, 404 on a wrong
# base URL, 408, 429) is about the connection or the config, and retrying may succeed.
REJECTING_STATUSES = frozenset({400, 413, 415, 422})
# The pipeline retries each stage with backoff; a hidden retry here would only turn a 5xx
# into requests.RetryError and lose Orthanc's error message.
NO_RETRY = Retry(total=0, raise_on_status=False)

# How much of a file each write of an upload sends: urllib3's 16 KiB is 640 reads and
# sends per 10 MB image, in Python; 1 MiB is ten.
UPLOAD_BLOCK = 1 << 20

# The header carrying the xray plugin's stored-file secret (checked in orthanc_plugin/host.py).
STORED_FILE_HEADER = "X-Xray-Stored-File-Token"

# requests asks for gzip by default and Orthanc then compresses the whole file before
# sending the first byte: 0.8 s for 10 MB on loopback, a read timeout for 400 MB.
IDENTITY = {"Accept-Encoding": "identity"}

StoreStatus = Literal["Success", "AlreadyStored"]


@dataclass(frozen=True)
class ForwardResult:
    """What Orthanc made of one forwarded instance.

    Attributes
    ----------
    orthanc_id:
        Orthanc's id of the instance.
    status:
        ``"Success"`` (stored now) or ``"AlreadyStored"`` (Orthanc holds that SOP
        Instance UID already; its copy was not replaced).
    conflict:
        True when Orthanc's copy has another dataset digest than ours: a different
        version of the image is stored under the same SOP Instance UID.
    digest:
        Our dataset digest, as given to :meth:`Pacs.store`.
    orthanc_digest:
        Dataset digest of Orthanc's copy when it was fetched (``AlreadyStored`` only);
        ``None`` when it was not fetched or could not be parsed.
    """

    orthanc_id: str
    status: StoreStatus
    conflict: bool
    digest: bytes
    orthanc_digest: bytes | None


class UploadAdapter(HTTPAdapter):
    """requests' adapter whose connections send a body in ``UPLOAD_BLOCK`` writes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blocksize", UPLOAD_BLOCK)
        super().init_poolmanager(*args, **kwargs)


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def _orthanc_message(response: requests.Response) -> str:
    """Orthanc's own explanation of an error answer (its JSON ``Details``/``Message``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason or "no details"
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("Message", "Details") if body.get(key)]
        if parts:
            return ": ".join(parts)
    return str(body)[:200]


class Pacs:
    """Orthanc's REST API as the gateway uses it: store, find, read back, delete.

    Every failure is translated here: :class:`PacsUnavailable` (connection refused,
    timeout, 5xx, credentials refused: retry later), :class:`PacsRejected` (Orthanc
    refused the file itself: permanent) and :class:`InstanceMissing` (no such id).

    Each call opens its own HTTP session (``orthanc-rest-client`` builds one per call),
    so one ``Pacs`` may be shared between threads; :meth:`store`, the pipeline's forward,
    keeps one keep-alive session per thread instead, so that a stream of uploads reuses
    its connections.

    Parameters
    ----------
    url:
        Base URL of Orthanc's REST API, e.g. ``http://127.0.0.1:8042``. Credentials in
        it (``http://user:pw@host:8042``) are taken out and sent as basic auth, so that
        no message, log line or stored error carries them.
    user, password:
        HTTP basic auth credentials; ``None`` uses the URL's credentials, if any.
    timeout:
        Seconds to wait for an answer (connecting waits at most 5 s of it).
    stored_file_token:
        The xray plugin's secret for its stored-file route (``XrayGateway.StoredFileToken``),
        sent only to that route; ``None`` when the gateway does not hold it.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None,
        password: str | None,
        timeout: float = 30.0,
        stored_file_token: str | None = None,
    ) -> None:
        self.url = redact_url(url).rstrip("/")
        self._stored_file_token = stored_file_token
        if user is None and (credentials := userinfo(url)) is not None:
            user, password = credentials
        auth = HTTPBasicAuth(user, password or "") if user is not None else None
        # Plain http is expected on loopback; anywhere else the library's warning stands.
        client = Orthanc(self.url, auth=auth, warn_insecure=not _is_loopback(self.url))
        # orthanc-rest-client keeps the base URL on its shared service classes, so a
        # second client elsewhere in the process would redirect this one's calls.
        # Private subclasses give this client its own base URL.
        for name in ("instances", "server"):
            service = getattr(client, name)
            setattr(client, name, type(service)(service.__name__, (service,), {"domain": self.url}))
        self._client = client
        self._local = threading.local()  # each thread's keep-alive session for store()
        # Given on every call: endpoints called past the client's wrappers get no auth else.
        self._options: dict[str, Any] = {
            "auth": auth,
            "timeout_spec": apiron.Timeout(
                connection_timeout=min(timeout, 5.0), read_timeout=timeout
            ),
            "retry_spec": NO_RETRY,
        }

    @classmethod
    def from_embedded(cls, orthanc: EmbeddedOrthanc, *, timeout: float = 30.0) -> Pacs:
        """A client for the embedded Orthanc, with the credentials from its key file.

        Parameters
        ----------
        orthanc:
            The embedded Orthanc (started or not).
        timeout:
            Seconds to wait for an answer.

        Returns
        -------
        Pacs
            A client for ``orthanc.url``.
        """
        user, password = orthanc.credentials
        return cls(
            orthanc.url, user=user, password=password, timeout=timeout,
            stored_file_token=orthanc.stored_file_token,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"Pacs({self.url!r})"

    def store(self, path: Path, *, digest: bytes) -> ForwardResult:
        """Forward a Part-10 file (``POST /instances``), streamed from disk.

        Parameters
        ----------
        path:
            The Part-10 file as received.
        digest:
            Our dataset digest of it (:func:`gateway.core.fingerprint.fingerprint`).

        Returns
        -------
        ForwardResult
            ``Success``; or ``AlreadyStored`` with ``conflict`` telling whether Orthanc's
            copy has another dataset digest (it is fetched and fingerprinted to tell).

        Raises
        ------
        PacsUnavailable
            Orthanc could not be reached, timed out, failed or refused the credentials.
        PacsRejected
            Orthanc refused the file (e.g. it cannot parse it).
        """
        with path.open("rb") as body:
            # A file object as the body is streamed by requests with a Content-Length
            # from fstat: the instance is never read into memory as a whole.
            reply = self._call(lambda: self._post_instance(body), what="store")
        if not isinstance(reply, dict) or not reply.get("ID"):
            raise PacsRejected(f"Orthanc did not store the file: {str(reply)[:200]}")
        orthanc_id = str(reply["ID"])
        status = reply.get("Status")
        if status == "Success":
            return ForwardResult(orthanc_id, "Success", False, digest, None)
        if status != "AlreadyStored":
            raise PacsRejected(f"Orthanc answered {status!r} for instance {orthanc_id}")
        try:
            theirs: bytes | None = self.fingerprint(orthanc_id).digest
        except DatasetUnreadable:
            theirs = None
        conflict = theirs != digest
        if conflict:
            log.warning(
                "Orthanc %s already holds another version: its digest %s…, ours %s…",
                orthanc_id,
                theirs.hex()[:16] if theirs else "unreadable",
                digest.hex()[:16],
            )
        return ForwardResult(orthanc_id, "AlreadyStored", conflict, digest, theirs)

    def _post_instance(self, body: BinaryIO) -> Any:
        """``POST /instances`` on this thread's keep-alive session; Orthanc's JSON answer."""
        timeout = self._options["timeout_spec"]
        response = self._session().post(
            f"{self.url}/instances/",  # the path orthanc-rest-client posts to
            data=body,
            auth=self._options["auth"],
            headers={"Content-Type": "application/dicom", **IDENTITY},
            timeout=(timeout.connection_timeout, timeout.read_timeout),
        )
        with contextlib.closing(response):
            response.raise_for_status()
            return response.json()

    def _session(self) -> requests.Session:
        """This thread's session (a ``requests.Session`` is not shared between threads),
        with no hidden retry (``NO_RETRY``: the pipeline retries)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = UploadAdapter(max_retries=NO_RETRY)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def find(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID (``POST /tools/lookup``).

        Parameters
        ----------
        sop_instance_uid:
            The DICOM SOP Instance UID.

        Returns
        -------
        str or None
            The Orthanc id, or ``None`` when Orthanc holds no such instance.
        """
        # Not Orthanc.lookup(): it JSON-encodes the UID, quotes included, and Orthanc
        # then matches nothing. The endpoint takes the bare UID as the body.
        found = self._call(
            lambda: self._client.server.tools_lookup(data=sop_instance_uid, **self._options),
            what="lookup",
        )
        for item in found if isinstance(found, list) else []:
            if isinstance(item, dict) and item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def stream_file(self, orthanc_id: str) -> Iterator[bytes]:
        """Orthanc's stored file, in chunks as they arrive (``GET /instances/{id}/file``).

        The request is made at once, so a missing instance raises here; errors while
        reading raise from the iterator. Close the iterator to drop the connection early.

        Parameters
        ----------
        orthanc_id:
            Orthanc's id of the instance.

        Returns
        -------
        Iterator[bytes]
            The Part-10 file's bytes.

        Raises
        ------
        InstanceMissing
            Orthanc has no instance with that id.
        PacsUnavailable
            Orthanc could not be reached, timed out or failed.
        """
        response: requests.Response = self._call(
            lambda: self._client.get_instance_file(
                orthanc_id, headers=IDENTITY, return_raw_response_object=True, **self._options
            ),
            what=f"read instance {orthanc_id}",
            missing=orthanc_id,
        )
        return self._chunks(response, orthanc_id)

    def _chunks(self, response: requests.Response, orthanc_id: str) -> Iterator[bytes]:
        with contextlib.closing(response):
            try:
                yield from response.iter_content(CHUNK)
            except requests.RequestException as exc:
                raise PacsUnavailable(
                    f"reading instance {orthanc_id} failed: {redact_text(str(exc))}"
                ) from exc

    def fetch(self, orthanc_id: str, sink: IO[bytes]) -> int:
        """Copy Orthanc's stored file into ``sink``; returns the number of bytes.

        Parameters
        ----------
        orthanc_id:
            Orthanc's id of the instance.
        sink:
            A binary file object to write to.

        Returns
        -------
        int
            Bytes written.
        """
        size = 0
        for chunk in self.stream_file(orthanc_id):
            sink.write(chunk)
            size += len(chunk)
        return size

    def fetch_stored(self, orthanc_id: str, sink: IO[bytes]) -> int:
        """Copy Orthanc's file into ``sink`` *as stored*, even when the xray plugin refuses it.

        The plugin guards every read and refuses a tampered file; verdicts need to hash
        and compare exactly that file, so they read it through the plugin's unchecked
        route (``GET /xray/instances/{id}/stored-file``), which answers only the holder of
        its secret (``stored_file_token``). Without the plugin, this is :meth:`fetch`.

        Raises
        ------
        InstanceMissing
            Orthanc has no instance with that id.
        PacsUnavailable
            Orthanc cannot be read, or the plugin refused the secret (HTTP 403).
        """
        url = f"{self.url}/xray/instances/{orthanc_id}/stored-file"
        timeout = self._options["timeout_spec"]
        headers = dict(IDENTITY)
        if self._stored_file_token is not None:
            headers[STORED_FILE_HEADER] = self._stored_file_token
        try:
            response = requests.get(
                url,
                auth=self._options["auth"],
                headers=headers,
                stream=True,
                timeout=(timeout.connection_timeout, timeout.read_timeout),
            )
        except requests.RequestException as exc:
            raise PacsUnavailable(
                f"Orthanc at {self.url} could not be read: {redact_text(str(exc))}"
            ) from exc
        with contextlib.closing(response):
            if response.status_code == 404:
                # No plugin (no such route), or no such instance: the plain route tells.
                return self.fetch(orthanc_id, sink)
            if response.status_code == 403:
                raise PacsUnavailable(
                    f"the xray plugin in Orthanc at {self.url} refused the stored-file secret: "
                    "set GATEWAY_ORTHANC_STORED_FILE_TOKEN to the plugin's "
                    "XrayGateway.StoredFileToken",
                    status=403,
                )
            if response.status_code != 200:
                raise PacsUnavailable(
                    f"Orthanc at {self.url} could not read instance {orthanc_id}: "
                    f"{_orthanc_message(response)} (HTTP {response.status_code})",
                    status=response.status_code,
                )
            size = 0
            for chunk in self._chunks(response, orthanc_id):
                sink.write(chunk)
                size += len(chunk)
            return size

    def find_instances(self, query: dict[str, str], *, page: int = 1000) -> list[tuple[str, str]]:
        """``(orthanc id, SOP Instance UID)`` of every instance matching ``query`` (``/tools/find``).

        Parameters
        ----------
        query:
            DICOM keyword to value, e.g. ``{"StudyInstanceUID": uid}``; ``{}`` for all.
        page:
            How many instances to ask for per request.
        """
        found: list[tuple[str, str]] = []
        while True:
            body = {"Level": "Instance", "Query": query, "Expand": True,
                    "Since": len(found), "Limit": page}  # fmt: skip
            batch: Any = self._call(
                partial(self._client.server.tools_find, json=body, **self._options),
                what="find instances",
            )
            for item in batch if isinstance(batch, list) else []:
                tags = item.get("MainDicomTags", {}) if isinstance(item, dict) else {}
                found.append((str(item.get("ID")), str(tags.get("SOPInstanceUID", ""))))
            if not isinstance(batch, list) or len(batch) < page:
                return found

    def preview(self, orthanc_id: str) -> bytes:
        """Orthanc's rendered PNG of the instance (``GET /instances/{id}/preview``), for the
        console's viewer: the xray plugin checks the read, so an altered file renders not.

        Raises
        ------
        InstanceMissing
            Orthanc has no such instance.
        PacsUnavailable
            Orthanc cannot be read, or refused to render it (the plugin's refusal included).
        """
        timeout = self._options["timeout_spec"]
        try:
            response = requests.get(
                f"{self.url}/instances/{orthanc_id}/preview",
                auth=self._options["auth"],
                headers={"Accept": "image/png"},
                timeout=(timeout.connection_timeout, timeout.read_timeout),
            )
        except requests.RequestException as exc:
            raise PacsUnavailable(
                f"Orthanc at {self.url} could not render: {redact_text(str(exc))}"
            ) from exc
        if response.status_code == 404:
            raise InstanceMissing(f"Orthanc has no instance {orthanc_id}", status=404)
        if response.status_code != 200:
            raise PacsUnavailable(
                f"Orthanc at {self.url} did not render instance {orthanc_id}: "
                f"{_orthanc_message(response)} (HTTP {response.status_code})",
                status=response.status_code,
            )
        return response.content

    def study_instance_uids(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs of every instance Orthanc holds in a study."""
        return [uid for _, uid in self.find_instances({"StudyInstanceUID": study_instance_uid})]

    def file(self, orthanc_id: str) -> bytes:
        """Orthanc's stored file as bytes (small instances; see :meth:`stream_file`).

        Parameters
        ----------
        orthanc_id:
            Orthanc's id of the instance.

        Returns
        -------
        bytes
            The Part-10 file.
        """
        return b"".join(self.stream_file(orthanc_id))

    def fingerprint(self, orthanc_id: str) -> Fingerprint:
        """Fingerprint Orthanc's copy, spilling to a temporary file past 8 MiB.

        Parameters
        ----------
        orthanc_id:
            Orthanc's id of the instance.

        Returns
        -------
        Fingerprint
            Digests of Orthanc's copy, comparable with the gateway's.

        Raises
        ------
        DatasetUnreadable
            Orthanc's copy is not a readable Part-10 file.
        """
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
            self.fetch(orthanc_id, copy)
            # typeshed types SpooledTemporaryFile as IO[bytes]; it has every BinaryIO method
            return fingerprint(cast(BinaryIO, copy))

    def delete(self, orthanc_id: str) -> None:
        """Delete an instance from Orthanc (``DELETE /instances/{id}``).

        Parameters
        ----------
        orthanc_id:
            Orthanc's id of the instance.

        Raises
        ------
        InstanceMissing
            Orthanc has no instance with that id.
        """
        self._call(
            lambda: self._client.delete_instance(orthanc_id, **self._options),
            what=f"delete instance {orthanc_id}",
            missing=orthanc_id,
        )

    def check(self) -> str:
        """Ask Orthanc who it is (``GET /system``): its version.

        Returns
        -------
        str
            Orthanc's version, e.g. ``"1.10.1"``.

        Raises
        ------
        PacsUnavailable
            Orthanc is down, failing, or refuses the credentials.
        """
        system = self._call(lambda: self._client.get_system(**self._options), what="check")
        return str(system.get("Version", "?")) if isinstance(system, dict) else "?"

    def instances(self, *, page: int = 1000) -> list[str]:
        """Ids of every instance Orthanc holds (``GET /instances``, ``page`` at a time).

        Parameters
        ----------
        page:
            How many ids to ask for per request.

        Returns
        -------
        list of str
            Orthanc ids.
        """
        ids: list[str] = []
        while True:
            start = len(ids)
            batch = self._call(
                partial(self._client.get_instances, since=start, limit=page, **self._options),
                what="list instances",
            )
            ids.extend(str(item) for item in batch)
            if len(batch) < page:
                return ids

    def _call(self, request: Callable[[], T], *, what: str, missing: str | None = None) -> T:
        """Run one request, translating every failure into the ForwardError tree."""
        try:
            return request()
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            message = redact_text(_orthanc_message(response) if response is not None else str(exc))
            if status == 404 and missing is not None:
                raise InstanceMissing(f"Orthanc has no instance {missing}", status=status) from None
            if status in REJECTING_STATUSES:
                raise PacsRejected(
                    f"Orthanc refused to {what}: {message} (HTTP {status})", status=status
                ) from None
            if status in (401, 403):
                message = "credentials refused"
            raise PacsUnavailable(
                f"Orthanc at {self.url} could not {what}: {message} (HTTP {status})",
                status=status,
            ) from None
        except requests.RequestException as exc:
            raise PacsUnavailable(
                f"Orthanc at {self.url} could not {what}: {type(exc).__name__}: "
                f"{redact_text(str(exc))}"
            ) from exc
        except ValueError as exc:  # an answer that is not JSON: not Orthanc at that URL
            raise PacsUnavailable(
                f"Orthanc at {self.url} gave an unreadable answer to {what}"
            ) from exc
