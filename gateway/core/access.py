"""One access-trail entry as a Merkle leaf: its inputs, their keys and its hash (pure).

The local log (the index's ``access_log``) holds who read which image, when, and the
verdict served, by name and UID. The chain holds only the root of a batch of leaves, and
a leaf holds only pseudonymous keys (HMAC-SHA256 under the site's pseudonym key, as
:func:`gateway.core.keys.record_key`) and the entry's plain facts::

    leaf = H(0x00 ‖ "xray-access/1" ‖ entry_id ‖ at_ms ‖ record_key ‖ study_key ‖ who_key
             ‖ served ‖ len ‖ route ‖ len ‖ verdict)

``entry_id`` and ``at_ms`` are 8-byte big-endian, ``served`` one byte, ``len`` one byte
before each short ASCII string. The tag keeps an access leaf from ever equalling an image
leaf (which is 0x00 and four 32-byte values), and the contract refuses an access batch as
proof of an image anyway. The tree over the leaves is :class:`gateway.core.merkle.MerkleTree`,
the same as image batches'.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.core.keys import record_key
from gateway.core.merkle import LEAF_PREFIX

LEAF_TAG = b"xray-access/1"
NO_KEY = b"\x00" * 32  # an entry that names no instance (or no study)


def study_key(pseudonym_key: bytes, study_instance_uid: str | None) -> bytes:
    """HMAC-SHA256 of ``"study:" + StudyInstanceUID`` (zeros when the study is unknown)."""
    if not study_instance_uid:
        return NO_KEY
    return hmac.new(pseudonym_key, b"study:" + study_instance_uid.encode(), "sha256").digest()


def who_key(pseudonym_key: bytes, who_kind: str, who: str) -> bytes:
    """HMAC-SHA256 of ``"who:" + kind + ":" + name``: the reader, pseudonymous on chain."""
    return hmac.new(pseudonym_key, f"who:{who_kind}:{who}".encode(), "sha256").digest()


def instance_key(pseudonym_key: bytes, sop_instance_uid: str | None) -> bytes:
    """The image's ``record_key`` (zeros when the entry names no instance)."""
    return record_key(pseudonym_key, sop_instance_uid) if sop_instance_uid else NO_KEY


@dataclass(frozen=True)
class AccessLeaf:
    """The inputs of one entry's leaf: what an auditor needs to recompute it."""

    entry_id: int
    at_ms: int
    record_key: bytes
    study_key: bytes
    who_key: bytes
    route: str
    verdict: str
    served: bool

    def hash(self) -> bytes:
        """The leaf: SHA-256 over the prefix, the tag and the fields (module docstring)."""
        for value in (self.record_key, self.study_key, self.who_key):
            if len(value) != 32:
                raise ValueError("access leaf keys are 32-byte values")
        parts = [
            LEAF_PREFIX,
            LEAF_TAG,
            self.entry_id.to_bytes(8, "big"),
            self.at_ms.to_bytes(8, "big"),
            self.record_key,
            self.study_key,
            self.who_key,
            b"\x01" if self.served else b"\x00",
        ]
        for text in (self.route, self.verdict):
            encoded = text.encode("ascii")
            if len(encoded) > 255:
                raise ValueError("access leaf strings are at most 255 bytes")
            parts += [bytes([len(encoded)]), encoded]
        return hashlib.sha256(b"".join(parts)).digest()

    def as_json(self) -> dict[str, object]:
        """The inputs as JSON (keys in hex), as the API and the CLI show them."""
        return {
            "entry_id": self.entry_id,
            "at_ms": self.at_ms,
            "record_key": self.record_key.hex(),
            "study_key": self.study_key.hex(),
            "who_key": self.who_key.hex(),
            "route": self.route,
            "verdict": self.verdict,
            "served": self.served,
        }


#: The id of a token issued before tokens had ids: ``name:`` and its name
#: (``gateway/api/auth.py``).
LEGACY_ID_PREFIX = "name:"


def grantee_key(pseudonym_key: bytes, grantee_id: str) -> bytes:
    """The grantee of a grant as the chain names it: an account's address left-padded to
    32 bytes, or for a token holder an HMAC of its token's id (``"who:token-id:" + id``),
    never its name. A token issued before ids (``name:<name>``) keeps the key its grants
    had then, the reader key of its name (:func:`who_key`)."""
    if is_account(grantee_id):
        return bytes(12) + bytes.fromhex(grantee_id[2:])
    if grantee_id.startswith(LEGACY_ID_PREFIX):
        return who_key(pseudonym_key, "token", grantee_id[len(LEGACY_ID_PREFIX) :])
    return who_key(pseudonym_key, "token-id", grantee_id)


def is_account(grantee: str) -> bool:
    """Whether ``grantee`` is an account address (``0x`` and 40 hex digits)."""
    return (
        len(grantee) == 42
        and grantee[:2] == "0x"
        and all(c in "0123456789abcdefABCDEF" for c in grantee[2:])
    )
