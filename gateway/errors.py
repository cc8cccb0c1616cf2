"""The gateway's exception tree.

Every error the gateway raises on purpose derives from :class:`GatewayError`, and is
translated at the boundary only: into a DICOM status in ``receive``, an HTTP problem in
``api/`` and a one-line message in the CLI.

The tree also says what is worth waiting for. An :class:`Unavailable` (marked ``*`` below)
means "not now": something the work depends on is out (the spool's disk, the chain, the
PACS, the object store) or the work waits for other work. :func:`is_transient` reads it,
and the pipeline retries such a failure for as long as it takes; any other failure is
permanent, retried a few times and then parked.

::

    GatewayError
    ├── Unavailable               * not now (an outage, a wait): retried for as long as it takes
    ├── ConfigError                 settings missing, malformed or placeholder
    │   ├── IndexSchemaTooNew       the index was written by a newer gateway: refuse to run
    │   └── KeysDiffer              this node's pseudonym key or KEKs are not the index's rows'
    ├── BackupFailed                `xray-gateway backup` could not take its copy
    ├── DatasetUnreadable           a received dataset cannot be understood (-> 0xC000-class)
    │   └── DatasetTooLarge         it inflates past GATEWAY_MAX_INSTANCE_BYTES (-> 0xA700)
    ├── SpoolUnavailable          * received bytes cannot be made durable (-> 0xA700)
    ├── SpoolSwapped                a spool file no longer hashes to what was acked: never sealed
    ├── AlertsUnavailable           the Orthanc plugin's alerts file cannot be read
    ├── DeliveryFailed              a webhook endpoint or the syslog receiver did not take an
    │                               event (refused, non-2xx, timed out): retried with backoff
    ├── AccessJournalUnavailable    the Orthanc plugin's access journal cannot be read
    ├── KeyringError                the key directory holds no KEK with that id; ``.kek_id``
    │   └── OldKeksInUse            `keys rotate --retire-old`: something still under an old
    │                               KEK, so none is destroyed (erasure2 part)
    ├── ForwardError                anything on the PACS (Orthanc) side; as such, not transient
    │   ├── PacsUnavailable       * refused, timed out, 5xx or auth refused: retry later
    │   ├── PacsRejected            Orthanc refused the file itself (e.g. unparsable): permanent
    │   └── InstanceMissing         Orthanc has no instance with that id
    ├── LedgerError                 anything on the chain side
    │   ├── ChainUnavailable      * the JSON-RPC node cannot be reached
    │   ├── ContractNotDeployed     no xray contract at the configured address
    │   │   └── ContractCodeMismatch  code there, but not contracts/out/Xray.json's
    │   ├── TransactionFailed       mined with status 0, never mined, or refused by the node
    │   │   └── TransactionPending * sent, still not mined after every re-send: retry later
    │   ├── ChainRequestFailed      a queued chain write was refused; ``.error_type`` (grants2)
    │   ├── ChainRequestPending   * a queued chain write is not settled within the wait;
    │   │                           ``.request_id`` (-> 503; grants2 part)
    │   └── ContractRevert          the contract refused the call; ``.name`` is its custom error
    │       ├── AccessControlUnauthorizedAccount
    │       ├── XrayNotRecorder, XrayNotOwner, XrayNotPermissionManager, XrayNotOwnDoctor
    │       ├── XrayRecordExists, XrayUnknownRecord, XrayRecordRetired, ...
    │       └── (one subclass per custom error in the contract's ABI)
    ├── SealError                   a sealed object cannot be made or opened
    │   ├── SealCorrupt             not an intact sealed object for this record_key and digest
    │   ├── SealUnsupported         written in a format version this gateway does not read
    │   ├── SealKeyMissing          sealed under a KEK the keyring lacks (also a KeyringError)
    │   └── KeyShredded             sealed under a study key that erasure destroyed (erasure part)
    ├── StoreError                  anything on the object store side; as such, not transient
    │   ├── StoreUnavailable      * cannot be reached, timed out, or busy: retry later
    │   └── ObjectNotFound          no object under that name
    ├── UnknownInstance             not in the PACS, the index nor on the ledger (-> 404)
    ├── UnknownAlert                no alert with that id in either alerts file (-> 404)
    ├── CannotRestore               no verified original to put back (-> 409)
    ├── MustWait                  * a row waits for another (an older version, the anchor check)
    ├── ChildFailed                 an embedded child process exited early or never got ready
    ├── UploadsBusy                 every upload slot is taken (-> 429)
    ├── UploadAreaFull              the upload quota or the disk reserve is reached (-> 507)
    ├── AuditRunning                a sweep is running already; ``.audit_id`` (-> 409)
    ├── AccessDenied                a grantee reads what no standing grant covers (-> 403);
    │   │                           ``.reason``: ``not-granted``, ``grant-expired``, ``grant-revoked``
    ├── UnknownGrant                no grant with that id in the index (-> 404)
    ├── GrantNotStanding            extend/narrow a grant that is revoked or expired (-> 409);
    │                               ``.state`` (grants2 part)
    ├── DicomdirMismatch            a study zip's DICOMDIR would name other paths than its files
    ├── SignInRefused               a Sign-In with Ethereum message is refused (-> 401, 422 if
    │                               malformed); ``.reason``: ``siwe-malformed``,
    │                               ``siwe-signature``, ``siwe-nonce``, ``siwe-expired``,
    │                               ``siwe-domain``, ``siwe-chain`` (siwe part)
    ├── ErasureError                an erasure cannot be planned or carried out (erasure part)
    │   ├── ErasureNotFound         nothing to erase for that study or patient (-> 404)
    │   ├── ErasureChanged          the confirmation's hash is not the set as it is now (-> 409)
    │   └── ErasureInFlight       * images of the set are still worked by the pipeline: confirm
    │                               again (-> 503; erasure2 part)
    ├── ReceiptError                a receipt or a log proof does not hold (receipts part)
    │   ├── ReceiptMalformed        not an ``xray-receipt/1`` document
    │   └── CheckpointInvalid       a checkpoint note is malformed or not signed by the log key
    └── the Orthanc plugin's:
        ├── PluginConfigError       Orthanc's configuration defeats a check: refuse to start
        ├── IndexUnavailable        the gateway's index cannot be read (or connected to)
        ├── OrthancResourceNotFound Orthanc has no such resource
        └── ReadRefused             an attachment is not served; ``.verdict`` says why
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class Unavailable(GatewayError):
    """Not now: something the work depends on is out, or the work waits for other work.

    Nothing is wrong with what was asked, so the pipeline retries it for as long as it
    takes (:func:`is_transient`). Each subclass is also in the tree of its area
    (``StoreUnavailable`` is a :class:`StoreError`), so either ``except`` sees it.
    """


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying for as long as it takes.

    An :class:`Unavailable`, and the OS saying "not now" on our own side: a timeout, a
    connection reset, ENOSPC or EIO on our disk. A missing file or a refused permission
    needs a person, and so does every other error.
    """
    if isinstance(exc, Unavailable):
        return True
    # TimeoutError and ConnectionError are OSErrors too.
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))


class ConfigError(GatewayError):
    """A setting is missing, malformed, or still a placeholder."""


class IndexSchemaTooNew(ConfigError):
    """The index's schema version is above what this code knows: a newer gateway wrote it.

    Running on it could misread or overwrite columns this code does not know, so the
    gateway refuses to start (and ``status`` to read) until it is upgraded.
    """


class KeysDiffer(ConfigError):
    """This node's pseudonym key or KEKs are not the ones the shared index's rows were
    written with: another node's keys dir must be copied here (docs/scale-out.md).

    Running on would name images with other record keys (the same image twice on the
    ledger under two names) or seal with a key the other nodes cannot open.
    """


class BackupFailed(GatewayError):
    """``xray-gateway backup`` could not take a consistent copy of the index."""


class DatasetUnreadable(GatewayError):
    """A received dataset cannot be parsed or walked; nothing of it is recorded."""


class DatasetTooLarge(DatasetUnreadable):
    """A dataset would inflate past the configured cap (``GATEWAY_MAX_INSTANCE_BYTES``).

    Raised while inflating a deflated dataset, before the cap is crossed, or on a dataset
    with more elements than the gateway parses: the bytes may be valid DICOM, but reading
    them would take more than the gateway allows one instance.

    Attributes
    ----------
    limit:
        The byte limit that was crossed, or ``None`` for a count of elements.
    """

    def __init__(self, message: str, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class KeyringError(GatewayError):
    """A KEK id is not in the keyring: :class:`KeyError` for the key directory.

    Attributes
    ----------
    kek_id:
        The id that was asked for, if the error is about one.
    """

    def __init__(self, message: str, *, kek_id: str | None = None) -> None:
        super().__init__(message)
        self.kek_id = kek_id


class OldKeksInUse(KeyringError):
    """Old KEKs cannot be destroyed: a live study key or a v1 object is still wrapped under
    one after ``keys rotate --retire-old`` re-wrapped everything (a gateway node was still
    running, or the store changed meanwhile). Nothing was destroyed; run it again."""


class SealError(GatewayError):
    """A sealed object could not be made or opened."""


class SealCorrupt(SealError):
    """The bytes are not an intact sealed object for this record_key and digest.

    Raised for a bad magic, a truncated header or segment, a data key that does not
    unwrap, and any segment that fails authentication (altered, reordered, swapped,
    dropped, or sealed for another record_key or digest).
    """


class SealUnsupported(SealError):
    """The object is written in a format version this gateway does not read."""


class SealKeyMissing(SealError, KeyringError):
    """The header names a KEK the keyring does not hold.

    Both a :class:`SealError` (the object cannot be opened) and a :class:`KeyringError`
    (the fix is in the key directory, not in the object), so either ``except`` sees it.
    """


class KeyShredded(SealError):
    """The object is sealed under a study key that an erasure destroyed (crypto-shredding).

    Nothing can open it any more, by design: the data key is wrapped under the study key
    alone, and the study key is gone.

    Attributes
    ----------
    key_id:
        The destroyed study key's id (pseudonymous).
    """

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class SpoolUnavailable(Unavailable):
    """Received bytes cannot be made durable; the C-STORE must not be acked."""


class SpoolSwapped(GatewayError):
    """A spool file's bytes are not the ones received and acknowledged (changed after the ack).

    The pipeline parks the row at once and raises a ``spool_swapped`` alert; the file is
    kept as evidence and nothing of it is sealed, anchored or forwarded.
    """


class AlertsUnavailable(GatewayError):
    """The Orthanc plugin's alerts file exists but cannot be read (API: 503)."""


class DeliveryFailed(GatewayError):
    """A webhook endpoint or the syslog receiver did not take an event.

    The outbox (:mod:`gateway.notify.outbox`) keeps the event and tries again with
    backoff; the message names the target by its id and host only (never a secret).
    """


class AccessJournalUnavailable(GatewayError):
    """The Orthanc plugin's access journal exists but cannot be read (the import waits)."""


class LedgerError(GatewayError):
    """Something went wrong talking to the xray contract."""


class ChainUnavailable(LedgerError, Unavailable):
    """The chain's JSON-RPC endpoint cannot be reached."""


class ChainRequestFailed(LedgerError):
    """A chain write queued for the anchoring worker was refused (by the contract, the node,
    or its worker stopped while sending it).

    Attributes
    ----------
    error_type:
        The name of the error the worker met (``XrayGrantRevoked``, ``Interrupted``, ...).
    """

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class ChainRequestPending(LedgerError, Unavailable):
    """A chain write queued for the anchoring worker is not settled within the wait: it
    stays queued (or in flight) and its outcome is kept in the index under ``.request_id``."""

    def __init__(self, message: str, *, request_id: int) -> None:
        super().__init__(message)
        self.request_id = request_id


class ContractNotDeployed(LedgerError):
    """There is no contract code at the configured address."""


class ContractCodeMismatch(ContractNotDeployed):
    """The runtime code at the pinned address is not the committed artifact's."""


class TransactionFailed(LedgerError):
    """A transaction was mined with status 0, was not mined in time, or the node refused it."""

    def __init__(self, message: str, *, tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class TransactionPending(TransactionFailed, Unavailable):
    """Sent and not mined yet, re-sends included: the chain is slow, not the call wrong.

    It may still be mined, so a retry looks the record up before sending again; the
    pipeline retries it for as long as it takes, like an unreachable node.
    """


class ContractRevert(LedgerError):
    """The contract reverted with a custom error.

    Attributes
    ----------
    name:
        The custom error's name as declared in Solidity, e.g. ``XrayRecordExists``.
    values:
        The error's decoded arguments, in declaration order.
    """

    name = "ContractRevert"

    def __init__(self, values: tuple[Any, ...] = (), *, tx_hash: str | None = None) -> None:
        self.values = values
        self.tx_hash = tx_hash
        shown = ", ".join(_show(v) for v in values)
        super().__init__(f"{self.name}({shown})")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return repr(value)


def _revert(name: str, doc: str) -> type[ContractRevert]:
    return type(name, (ContractRevert,), {"name": name, "__doc__": doc})


# One class per custom error the xray contract (and OpenZeppelin's AccessControl) declares.
# tests/unit/test_ledger_errors.py fails if the ABI gains an error that is not listed here.
AccessControlUnauthorizedAccount = _revert(
    "AccessControlUnauthorizedAccount", "The account lacks the role the call needs."
)
AccessControlBadConfirmation = _revert(
    "AccessControlBadConfirmation", "renounceRole was called for another account."
)
XrayNotRecorder = _revert("XrayNotRecorder", "The caller does not hold the Recorder role.")
XrayNotOwner = _revert(
    "XrayNotOwner", "The caller is neither the record's owner nor the admin: (key, caller, owner)."
)
XrayNotPermissionManager = _revert(
    "XrayNotPermissionManager", "The caller may not manage that kind of permission."
)
XraySelfManagement = _revert("XraySelfManagement", "A Hospital may not manage its own permissions.")
XrayHoldsOtherRole = _revert(
    "XrayHoldsOtherRole", "A Hospital may not make a Doctor of an account holding another role."
)
XrayNotOwnDoctor = _revert(
    "XrayNotOwnDoctor", "The Doctor was not added by this Hospital: (doctor, hospital)."
)
XrayInvalidReason = _revert("XrayInvalidReason", "A retirement needs a reason other than None.")
XrayInvalidUserType = _revert("XrayInvalidUserType", "The user type is not a permission.")
XrayNoPermission = _revert("XrayNoPermission", "The account holds no permission to remove.")
XrayZeroValue = _revert("XrayZeroValue", "A key, digest, root or address was zero.")
XrayRecordExists = _revert("XrayRecordExists", "The record key is already written.")
XrayUnknownRecord = _revert("XrayUnknownRecord", "The record key was never written.")
XrayRecordRetired = _revert("XrayRecordRetired", "The record is retired.")
XrayUnchangedDigest = _revert("XrayUnchangedDigest", "A new version must change the digest.")
XrayUnknownVersion = _revert("XrayUnknownVersion", "No such version of the record.")
XrayEmptyBatch = _revert("XrayEmptyBatch", "A batch must hold at least one image.")
XrayBatchExists = _revert("XrayBatchExists", "The Merkle root is already anchored.")
XrayUnknownBatch = _revert("XrayUnknownBatch", "No batch has that id.")
XrayNotImageBatch = _revert(
    "XrayNotImageBatch", "The batch anchors access-trail entries: it proves no image."
)
XrayNotInBatch = _revert(
    "XrayNotInBatch", "The inclusion proof does not lead to that batch's root."
)
XrayIndexOutOfRange = _revert("XrayIndexOutOfRange", "Index past the patient's records.")
# grants (issue #16)
XrayNotGranter = _revert(
    "XrayNotGranter", "The caller may not grant (no Hospital, Doctor or Recorder) or revoke."
)
XrayGrantExpiry = _revert("XrayGrantExpiry", "A grant's expiry must be in the future.")
XrayUnknownGrant = _revert("XrayUnknownGrant", "No grant has that id.")
XrayGrantRevoked = _revert("XrayGrantRevoked", "The grant is already revoked.")

REVERTS: dict[str, type[ContractRevert]] = {
    cls.name: cls
    for cls in (
        AccessControlUnauthorizedAccount,
        AccessControlBadConfirmation,
        XrayNotRecorder,
        XrayNotOwner,
        XrayNotPermissionManager,
        XraySelfManagement,
        XrayHoldsOtherRole,
        XrayNotOwnDoctor,
        XrayInvalidReason,
        XrayInvalidUserType,
        XrayNoPermission,
        XrayZeroValue,
        XrayRecordExists,
        XrayUnknownRecord,
        XrayRecordRetired,
        XrayUnchangedDigest,
        XrayUnknownVersion,
        XrayEmptyBatch,
        XrayBatchExists,
        XrayUnknownBatch,
        XrayNotImageBatch,
        XrayNotInBatch,
        XrayIndexOutOfRange,
        XrayNotGranter,
        XrayGrantExpiry,
        XrayUnknownGrant,
        XrayGrantRevoked,
    )
}


class StoreError(GatewayError):
    """Anything on the object store side; of its subclasses only StoreUnavailable is transient."""


class StoreUnavailable(StoreError, Unavailable):
    """The object store cannot be reached, timed out, or is busy: retry later."""


class ObjectNotFound(StoreError):
    """There is no object under that name."""


class ForwardError(GatewayError):
    """Anything on the PACS (Orthanc) side; of its subclasses only PacsUnavailable is transient.

    Attributes
    ----------
    status:
        The HTTP status Orthanc answered with, or ``None`` when no answer came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PacsUnavailable(ForwardError, Unavailable):
    """Orthanc cannot be reached, timed out, failed (5xx) or refused our credentials.

    Retry later: nothing about the instance itself is wrong. A refused login counts as
    unavailable rather than rejected so that a misconfigured password delays images
    instead of marking every one of them permanently failed.
    """


class PacsRejected(ForwardError):
    """Orthanc refused the file itself (it cannot parse it): permanent, do not retry."""


class InstanceMissing(ForwardError):
    """Orthanc has no instance with that id (deleted, or never stored)."""


# -- verification, restore and the pipeline's own waits ------------------------------------


class UnknownInstance(GatewayError):
    """Nobody has heard of the instance: not in the PACS, the index or on the ledger."""


class UnknownAlert(GatewayError):
    """No alert with that id, in the gateway's alerts file nor in the plugin's (-> 404)."""


class CannotRestore(GatewayError):
    """The original cannot be put back (no PACS, no record, retired, or the sealed copy fails)."""


class MustWait(Unavailable):
    """A stage cannot run yet (e.g. an older version of the same image is still in flight):
    the row is retried like an outage, and logged at INFO."""


# -- the Orthanc plugin ---------------------------------------------------------------------


class IndexUnavailable(GatewayError):
    """The gateway's index cannot be read: missing, locked too long, corrupt, or (on
    PostgreSQL) its server cannot be connected to. Raised by the plugin and the index."""


class OrthancResourceNotFound(GatewayError):
    """The plugin asked Orthanc for a resource it does not have."""


class ReadRefused(GatewayError):
    """The plugin refuses to serve an attachment: Orthanc fails the read instead.

    ``verdict`` is the plugin's :class:`~gateway.orthanc_plugin.verdict.ReadVerdict` saying why.
    """

    def __init__(self, verdict: Any) -> None:
        super().__init__(
            f"xray-gateway refused SOP Instance {verdict.sop_instance_uid}: {verdict.status}. "
            f"{verdict.headline}"
        )
        self.verdict = verdict


# -- processes, uploads, audits and the plugin's configuration -----------------------------


class ChildFailed(GatewayError):
    """A child process exited early or never became ready."""


class UploadsBusy(GatewayError):
    """Every upload slot is taken."""


class UploadAreaFull(GatewayError):
    """Writing more would pass the upload quota or the spool's disk reserve."""


class AuditRunning(GatewayError):
    """A sweep is in progress already; ``audit_id`` is its id."""

    def __init__(self, audit_id: str) -> None:
        super().__init__(f"audit {audit_id} is running")
        self.audit_id = audit_id


# -- receipts and the log's checkpoints (the receipts part) ---------------------------------


class ReceiptError(GatewayError):
    """A receipt, a checkpoint or a log proof does not hold."""


class ReceiptMalformed(ReceiptError):
    """The document is not an ``xray-receipt/1`` receipt (a field missing or of a wrong type)."""


class CheckpointInvalid(ReceiptError):
    """A checkpoint note is malformed, or carries no valid signature by the log key."""


class PluginConfigError(GatewayError):
    """Orthanc's configuration does not let the plugin guarantee its checks."""


class AccessDenied(GatewayError):
    """A grantee asked for a study no standing grant of theirs covers.

    Attributes
    ----------
    reason:
        ``not-granted`` (no grant ever covered it), ``grant-expired`` (the newest grant
        that covered it expired) or ``grant-revoked`` (it was revoked).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownGrant(GatewayError):
    """The index holds no grant with that id."""


class GrantNotStanding(GatewayError):
    """A grant to extend or narrow is revoked or expired: there is nothing to carry on.

    Attributes
    ----------
    state:
        ``revoked`` or ``expired``.
    """

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state


class DicomdirMismatch(GatewayError):
    """pydicom wrote a DICOMDIR whose File IDs are not the paths the zip's files were
    streamed under: the zip is cut short rather than sent with a directory that lies."""


class SignInRefused(GatewayError):
    """A Sign-In with Ethereum (EIP-4361) message, or its signature, is refused.

    Attributes
    ----------
    reason:
        ``siwe-malformed`` (not an EIP-4361 message), ``siwe-signature`` (not signed by the
        address it names), ``siwe-nonce`` (not a nonce this gateway gave out, used already,
        or expired), ``siwe-expired`` (issued too long ago, past its expiration time, or
        not valid yet), ``siwe-domain`` (another domain or URI), ``siwe-chain`` (another
        chain id).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ErasureError(GatewayError):
    """An erasure cannot be planned or carried out (``xray-gateway erase``, ``/v1/erasures``)."""


class ErasureNotFound(ErasureError):
    """The study or patient asked for has nothing the gateway could erase."""


class ErasureChanged(ErasureError):
    """A confirmation names a dry run whose set is not the set as it is now.

    Either the hash is not one a dry run returned, the reason differs, or instances were
    added or removed since: run the dry run again and confirm what it lists.
    """


class ErasureInFlight(ErasureError, Unavailable):
    """A confirmation waited, and images of the set are still worked by the pipeline (a step
    under way, a Merkle batch not landed: an outage holds them). They are named, so the
    pipeline erases them as they come out; confirming again finishes the erasure."""
