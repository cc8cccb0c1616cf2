"""KEK rotation over the store: every object's data key re-wrapped, no image re-encrypted."""

from __future__ import annotations

import tempfile

from gateway.core.keys import Kek, Keyring
from gateway.core.seal import STUDY_KEY_VERSION, read_seal_header, rewrap_header
from gateway.store.base import CHUNK_SIZE, ObjectStore


def rewrap_store(store: ObjectStore, *, keyring: Keyring, new_kek: Kek) -> int:
    """Re-wrap the data key of every v1 object in ``store`` under ``new_kek``.

    Objects of format v2 are left alone: their data key is under their study key, which
    the index keeps wrapped under a KEK (``StudyKeys.rewrap`` re-wraps those).

    Each object is replaced by its new header followed by its segments, byte for byte
    (:func:`gateway.core.seal.rewrap_header`); the new object is put together in a
    temporary file first, so that the store is handed a whole object of known length.

    Parameters
    ----------
    store:
        The object store; its objects are replaced in place (``replace=True``).
    keyring:
        Must hold the KEK each object's header names now.
    new_kek:
        The KEK to wrap every data key under.

    Returns
    -------
    int
        How many (v1) objects were re-wrapped.

    Raises
    ------
    SealCorrupt, SealUnsupported, SealKeyMissing
        An object's header is not intact, or names a KEK the keyring lacks; the objects
        before it stay re-wrapped.
    """
    count = 0
    for name in store.names():
        with store.open(name) as sealed:
            if read_seal_header(sealed).version == STUDY_KEY_VERSION:
                continue
        with store.open(name) as sealed:
            header, offset = rewrap_header(sealed, keyring=keyring, new_kek=new_kek)
        with tempfile.TemporaryFile() as out, store.open(name) as sealed:
            out.write(header)
            sealed.read(offset)
            while chunk := sealed.read(CHUNK_SIZE):
                out.write(chunk)
            length = out.tell()
            out.seek(0)
            store.put(name, out, length=length, replace=True)
        count += 1
    return count
