"""A node joining a shared index must hold the keys its rows were written with."""

from __future__ import annotations

from gateway.core.keys import Keyring, record_key
from gateway.errors import KeysDiffer
from gateway.index.db import Index


def check_shared_keys(index: Index, *, pseudonym_key: bytes, keyring: Keyring) -> None:
    """Refuse a pseudonym key or keyring that differs from what the index's newest rows used.

    Two reads of one row each: the newest fingerprinted row's record key is recomputed
    from its SOP Instance UID with this node's pseudonym key, and the newest sealed row's
    KEK id must be in this node's keyring. (A KEK of the same id but other bytes is not
    detected here: it shows as a seal that does not open, ``SealCorrupt``.) An empty index
    passes: the first node's keys become the index's.

    Raises
    ------
    KeysDiffer
        Naming which key differs, and that the keys dir of a running node must be copied.
    """
    named = index.query(
        "SELECT sop_instance_uid, record_key FROM instances WHERE record_key IS NOT NULL"
        " ORDER BY id DESC LIMIT 1"
    )
    for uid, key in named:
        if record_key(pseudonym_key, str(uid)) != bytes(key):
            raise KeysDiffer(
                "this node's pseudonym key (keys/pseudonym.key) is not the one the shared "
                "index's rows were written with: copy keys/pseudonym.key and keys/kek/ from "
                "a running node before starting this one (docs/scale-out.md)"
            )
    sealed = index.query(
        "SELECT kek_id FROM instances WHERE kek_id IS NOT NULL ORDER BY id DESC LIMIT 1"
    )
    for (kek_id,) in sealed:
        if str(kek_id) not in keyring.ids:
            raise KeysDiffer(
                f"the shared index's newest rows are sealed under KEK {kek_id!r}, which this "
                "node's keys/kek/ lacks: copy keys/kek/ (and keys/pseudonym.key) from a "
                "running node before starting this one (docs/scale-out.md)"
            )
