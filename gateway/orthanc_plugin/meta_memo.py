"""The dataset digest of a stored file, its File Meta parsed once per attachment (pure).

Every read hashes the dataset bytes (:func:`gateway.core.fingerprint.dataset_digest`):
SHA-256 from where the File Meta ends. Finding that end is pydicom's parse of the File
Meta (:func:`~gateway.core.fingerprint.dataset_offset`), which on a CT slice costs half as
much again as the hash itself. The parse is a function of the bytes it reads, so
:class:`MetaMemo` keeps, per attachment, the exact File Meta bytes it parsed and the
Transfer Syntax UID they declare; a later read whose file starts with those very bytes,
followed by an element outside group 0002, gets the same answer without parsing. Any
change to the File Meta (or to the first dataset element's group) is parsed afresh. The
dataset itself is hashed on every read: nothing here remembers a digest or a verdict.
"""

from __future__ import annotations

import hashlib
import io

from gateway.core.fingerprint import dataset_offset

#: After the File Meta, pydicom reads the next element's header (8 bytes, 12 for a VR with
#: a 4-byte length) before it sees that its group is not 0002; a file that short after the
#: meta is parsed afresh, so the parse's outcome on it (an error) stays pydicom's.
NEXT_HEADER = 12
GROUP_0002 = b"\x02\x00"  # little endian, as the File Meta is always encoded
LIMIT = 100_000


class MetaMemo:
    """Per attachment UUID: the File Meta bytes last parsed and the syntax they declare.

    Thread-safe (single dict operations under the GIL); at most ``limit`` attachments are
    remembered, then the memo starts over (a miss only costs a parse).
    """

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._known: dict[str, tuple[bytes, str]] = {}

    def dataset_digest(self, uuid: str, data: bytes) -> tuple[bytes, str]:
        """SHA-256 of ``data``'s dataset bytes and its Transfer Syntax UID, as
        :func:`~gateway.core.fingerprint.dataset_digest` gives them.

        Raises :class:`~gateway.errors.DatasetUnreadable` when the File Meta cannot be read.
        """
        known = self._known.get(uuid)
        if known is not None and _same_meta(data, known[0]):
            meta, syntax = known
        else:
            offset, uid = dataset_offset(io.BytesIO(data))
            meta, syntax = data[:offset], str(uid)
            if len(self._known) >= self.limit:
                self._known.clear()
            self._known[uuid] = (meta, syntax)
        return hashlib.sha256(memoryview(data)[len(meta) :]).digest(), syntax

    def forget(self, uuid: str) -> None:
        """Drop what is known of ``uuid`` (Orthanc removed the attachment)."""
        self._known.pop(uuid, None)


def _same_meta(data: bytes, meta: bytes) -> bool:
    """Whether pydicom's File Meta parse of ``data`` must end where it ended on ``meta``:
    the same bytes up to there, then a whole element header outside group 0002."""
    end = len(meta)
    return (
        len(data) >= end + NEXT_HEADER
        and data.startswith(meta)
        and data[end : end + 2] != GROUP_0002
    )
