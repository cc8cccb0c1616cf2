"""The dataset digest of a stored file, its File Meta parsed once per attachment (pure).

Every read hashes the dataset bytes (:func:`gateway.core.fingerprint.dataset_digest`):
SHA-256 from where the File Meta ends. Finding that end is pydicom's parse of the File
Meta (:func:`~gateway.core.fingerprint.dataset_offset`), which on a CT slice costs a third
as much as the hash itself. The parse is a function of the bytes it reads, so
:class:`MetaMemo` keeps, per attachment, a :class:`MetaMark`: where the dataset starts,
the Transfer Syntax UID declared, and the SHA-256 of the exact bytes up to there (the
preamble and File Meta); a later read whose file starts with bytes of that very hash,
followed by an element outside group 0002, gets the same answer without parsing. Any
change to the File Meta (or to the first dataset element's group) is parsed afresh. The
dataset itself is hashed on every read: nothing here remembers a digest or a verdict.

The plugin's catalogue keeps each attachment's mark from its arrival, so the first read
after Orthanc starts (a viewer opening a study: every slice read once) is not a parse
either (``kept``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from gateway.core.fingerprint import dataset_offset

#: After the File Meta, pydicom reads the next element's header (8 bytes, 12 for a VR with
#: a 4-byte length) before it sees that its group is not 0002; a file that short after the
#: meta is parsed afresh, so the parse's outcome on it (an error) stays pydicom's.
NEXT_HEADER = 12
GROUP_0002 = b"\x02\x00"  # little endian, as the File Meta is always encoded
LIMIT = 100_000


@dataclass(frozen=True)
class MetaMark:
    """What a File Meta parse found, and which bytes it read."""

    #: Where the dataset starts (the preamble, ``DICM`` and the File Meta before it).
    end: int
    #: SHA-256 of the file's first ``end`` bytes.
    sha256: bytes
    #: The Transfer Syntax UID the File Meta declares.
    syntax: str


class MetaMemo:
    """Per attachment UUID: the :class:`MetaMark` of the File Meta last parsed.

    Thread-safe (single dict operations under the GIL); at most ``limit`` attachments are
    remembered, then the memo starts over (a miss only costs a parse).
    """

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._known: dict[str, MetaMark] = {}

    def dataset_digest(
        self, uuid: str, data: bytes, *, kept: MetaMark | None = None
    ) -> tuple[bytes, str]:
        """SHA-256 of ``data``'s dataset bytes and its Transfer Syntax UID, as
        :func:`~gateway.core.fingerprint.dataset_digest` gives them.

        ``kept``: the attachment's mark from the catalogue, used when this memo has none
        (or its own no longer fits) and the bytes fit it.

        Raises :class:`~gateway.errors.DatasetUnreadable` when the File Meta cannot be read.
        """
        known = self._known.get(uuid)
        if known is not None and _same_meta(data, known):
            mark = known
        elif kept is not None and _same_meta(data, kept):
            mark = self._remember(uuid, kept)
        else:
            offset, uid = dataset_offset(io.BytesIO(data))
            mark = self._remember(uuid, MetaMark(offset, _sha256(data, offset), str(uid)))
        return hashlib.sha256(memoryview(data)[mark.end :]).digest(), mark.syntax

    def mark(self, uuid: str) -> MetaMark | None:
        """The mark of ``uuid``'s File Meta last parsed (for the catalogue), or None."""
        return self._known.get(uuid)

    def forget(self, uuid: str) -> None:
        """Drop what is known of ``uuid`` (Orthanc removed the attachment)."""
        self._known.pop(uuid, None)

    def _remember(self, uuid: str, mark: MetaMark) -> MetaMark:
        if len(self._known) >= self.limit:
            self._known.clear()
        self._known[uuid] = mark
        return mark


def _sha256(data: bytes, end: int) -> bytes:
    return hashlib.sha256(memoryview(data)[:end]).digest()


def _same_meta(data: bytes, mark: MetaMark) -> bool:
    """Whether pydicom's File Meta parse of ``data`` must end where ``mark``'s did: the
    same bytes up to there (their SHA-256), then a whole element header outside group
    0002."""
    end = mark.end
    return (
        len(data) >= end + NEXT_HEADER
        and data[end : end + 2] != GROUP_0002
        and _sha256(data, end) == mark.sha256
    )
