"""The xray contract client: deploy, permissions, record, batch, retire, look up (web3.py)."""

from __future__ import annotations

import json
from functools import cache, partial
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import TransactionNotFound

from gateway import errors
from gateway.core.merkle import InclusionProof, in_batch
from gateway.ledger.sender import RevertDecoder, Sender, translate
from gateway.ledger.types import (
    BATCH_KINDS,
    ZERO_KEY,
    Anchor,
    Batch,
    BatchedLeaf,
    Grant,
    Image,
    ImageVersion,
    LedgerEvent,
    Retirement,
    RetireReason,
    UserType,
    retire_reason_name,
)
from gateway.procs import PROJECT_ROOT
from gateway.redact import redact_url, userinfo

ARTIFACT = PROJECT_ROOT / "contracts" / "out" / "Xray.json"
ZERO_ADDRESS = "0x" + "00" * 20
# Besu's default ``--rpc-max-logs-range``: no ``eth_getLogs`` spans more blocks than this.
DEFAULT_LOG_RANGE = 5_000


def role_id(role: str) -> bytes:
    """The contract's bytes32 id of ``admin``, ``hospital``, ``doctor``, ``recorder`` or ``auditor``."""
    if role == "admin":
        return b"\x00" * 32  # OpenZeppelin's DEFAULT_ADMIN_ROLE
    return bytes(Web3.keccak(text=f"{role.upper()}_ROLE"))


@cache
def load_artifact(path: Path = ARTIFACT) -> dict[str, Any]:
    """The committed compiler output: ABI, bytecode, compiler version, source hash."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise errors.ConfigError(f"{path} is missing: run `make contracts`") from None


def connect(url: str, *, timeout: float = 10.0) -> Web3:
    """A Web3 over HTTP JSON-RPC; raises ChainUnavailable when nobody answers.

    Credentials in ``url`` (``https://user:pw@node``) are sent as basic auth and kept
    out of the provider's URL, so no error message can quote them.
    """
    request_kwargs: dict[str, Any] = {"timeout": timeout}
    credentials = userinfo(url)
    if credentials is not None:
        request_kwargs["auth"] = credentials
    w3 = Web3(Web3.HTTPProvider(redact_url(url), request_kwargs=request_kwargs))
    if not w3.is_connected():
        raise errors.ChainUnavailable(f"no Ethereum JSON-RPC node answers at {redact_url(url)}")
    return w3


def deploy(w3: Web3, deployer: LocalAccount, *, admin: str | None = None) -> tuple[str, Anchor]:
    """Deploy the xray contract; ``admin`` (default: the deployer) gets the admin role."""
    artifact = load_artifact()
    decoder = RevertDecoder(artifact["abi"])
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    anchor = Sender(w3, deployer, decoder).transact(factory.constructor(admin or deployer.address))
    receipt = w3.eth.get_transaction_receipt(anchor.tx_hash)  # type: ignore[arg-type]
    address = receipt["contractAddress"]
    if address is None:
        raise errors.TransactionFailed("deployment created no contract", tx_hash=anchor.tx_hash)
    return str(address), anchor


class XrayLedger:
    """One deployed xray contract, seen (and, given an account, written) by the gateway.

    Parameters
    ----------
    w3:
        A connected Web3.
    address:
        The contract's address.
    account:
        The account that signs writes; ``None`` for a read-only client (auditors).
    receipt_timeout, max_resends, fee_bump:
        How the account's :class:`~gateway.ledger.sender.Sender` treats a transaction
        that stays pending: wait this long, then re-send with fees raised by this
        fraction, at most this many times.
    from_block:
        The contract's deployment block: no event of it is older, so log reads start here.
    log_range:
        The most blocks one ``eth_getLogs`` may span (a node refuses wider ranges).
    """

    def __init__(
        self,
        w3: Web3,
        address: str,
        *,
        account: LocalAccount | None = None,
        receipt_timeout: float = 60.0,
        max_resends: int = 3,
        fee_bump: float = 0.125,
        from_block: int = 0,
        log_range: int = DEFAULT_LOG_RANGE,
    ) -> None:
        if log_range < 1:
            raise ValueError("log_range must be at least one block")
        artifact = load_artifact()
        self.w3 = w3
        self.from_block = from_block
        self.log_range = log_range
        self.address = Web3.to_checksum_address(address)
        self._decoder = RevertDecoder(artifact["abi"])
        if not translate(self._decoder, lambda: w3.eth.get_code(self.address)):
            raise errors.ContractNotDeployed(f"no contract code at {self.address}")
        self.contract: Contract = w3.eth.contract(address=self.address, abi=artifact["abi"])
        self._receipt_timeout = receipt_timeout
        self._max_resends = max_resends
        self._fee_bump = fee_bump
        self.sender = (
            Sender(
                w3,
                account,
                self._decoder,
                receipt_timeout=receipt_timeout,
                max_resends=max_resends,
                fee_bump=fee_bump,
            )
            if account is not None
            else None
        )

    @classmethod
    def at(
        cls,
        url: str,
        address: str,
        *,
        account: LocalAccount | None = None,
        from_block: int = 0,
        log_range: int = DEFAULT_LOG_RANGE,
    ) -> XrayLedger:
        """Connect to ``url`` and open the contract at ``address``."""
        return cls(
            connect(url), address, account=account, from_block=from_block, log_range=log_range
        )

    # -- writes --------------------------------------------------------------------------

    def _transact(self, call: Any, *, gas: int | None = None) -> Anchor:
        if self.sender is None:
            raise errors.ConfigError("this ledger client is read-only: it has no account")
        return self.sender.transact(call, gas=gas)

    def as_account(self, account: LocalAccount) -> XrayLedger:
        """The same contract, writing as ``account``."""
        return XrayLedger(
            self.w3,
            self.address,
            account=account,
            receipt_timeout=self._receipt_timeout,
            max_resends=self._max_resends,
            fee_bump=self._fee_bump,
            from_block=self.from_block,
            log_range=self.log_range,
        )

    def set_permission(
        self, account: str, name: str, user_type: UserType, *, enabled: bool = True
    ) -> Anchor:
        """Give (or deny) ``account`` the ``user_type`` permission under ``name``."""
        fn = self.contract.functions.setPermission(
            Web3.to_checksum_address(account), name, int(user_type), enabled
        )
        return self._transact(fn)

    def remove_permission(self, account: str) -> Anchor:
        """Remove every xray permission of ``account``."""
        return self._transact(
            self.contract.functions.removePermission(Web3.to_checksum_address(account))
        )

    def record_image(
        self,
        *,
        record_key: bytes,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
        body_part: str,
        modality: str,
    ) -> Anchor:
        """Record the first version of an image; the signing Recorder becomes its owner."""
        fn = self.contract.functions.recordImage(
            record_key, patient_key, digest, pixel_digest, body_part, modality
        )
        return self._transact(fn)

    def supersede_image(
        self,
        *,
        record_key: bytes,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
        body_part: str,
        modality: str,
    ) -> Anchor:
        """Record a new version of an already recorded image (its owner or the admin)."""
        fn = self.contract.functions.supersedeImage(
            record_key, patient_key, digest, pixel_digest, body_part, modality
        )
        return self._transact(fn)

    def supersede_batched_image(
        self,
        *,
        record_key: bytes,
        leaf: BatchedLeaf,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
        body_part: str,
        modality: str,
    ) -> Anchor:
        """Record a new version of an image first anchored in a batch, shown by ``leaf``.

        Only the batch's recorder or the admin; a key the contract did not know yet gets
        its first stored version, and one written meanwhile by another account (after the
        batch) returns to the batch's recorder.
        """
        fn = self.contract.functions.supersedeBatchedImage(
            record_key,
            _batched_leaf(leaf),
            (patient_key, digest, pixel_digest, body_part, modality),
        )
        return self._transact(fn)

    def record_batch(self, *, root: bytes, count: int) -> tuple[int, Anchor]:
        """Anchor a Merkle root of ``count`` images; returns the batch id and the anchor."""
        anchor = self._transact(self.contract.functions.recordBatch(root, count))
        receipt = self.w3.eth.get_transaction_receipt(anchor.tx_hash)  # type: ignore[arg-type]
        events = self.contract.events.BatchAnchored().process_receipt(receipt)
        return int(events[0]["args"]["batchId"]), anchor

    def record_access_batch(self, *, root: bytes, count: int) -> tuple[int, Anchor]:
        """Anchor a Merkle root of ``count`` access-trail entries (a batch of kind ``Access``,
        in the same id sequence as image batches); returns the batch id and the anchor."""
        anchor = self._transact(self.contract.functions.recordAccessBatch(root, count))
        receipt = self.w3.eth.get_transaction_receipt(anchor.tx_hash)  # type: ignore[arg-type]
        events = self.contract.events.AccessBatchAnchored().process_receipt(receipt)
        return int(events[0]["args"]["batchId"]), anchor

    def retire_image(self, *, record_key: bytes, reason: RetireReason | str) -> Anchor:
        """Retire an image (its owner or the admin): the record stays, marked, with who and why.

        ``reason`` is a :class:`RetireReason` or its lowercase name (``"duplicate"``).
        """
        code = int(RetireReason.parse(reason))
        return self._transact(self.contract.functions.retireImage(record_key, code))

    def retire_batched_image(
        self,
        *,
        record_key: bytes,
        patient_key: bytes,
        digest: bytes,
        pixel_digest: bytes,
        batch_id: int,
        proof: InclusionProof,
        reason: RetireReason | str,
    ) -> Anchor:
        """Retire an image anchored in a batch; the chain checks its inclusion proof.

        Only the batch's recorder or the admin. ``reason`` as for :meth:`retire_image`.
        """
        leaf = BatchedLeaf(
            patient_key=patient_key, digest=digest, pixel_digest=pixel_digest,
            batch_id=batch_id, proof=proof,
        )  # fmt: skip
        code = int(RetireReason.parse(reason))
        fn = self.contract.functions.retireBatchedImage(record_key, _batched_leaf(leaf), code)
        return self._transact(fn)

    def grant_access(
        self, *, grantee: bytes, patient_key: bytes, study_key: bytes | None, expires_at: int
    ) -> tuple[int, Anchor]:
        """Grant ``grantee`` read access to one study (``study_key``) or every study of
        ``patient_key`` (``study_key`` None) until ``expires_at`` (epoch seconds); returns
        the grant id and the anchor. Admin, Hospital, Doctor or Recorder only."""
        call = self.contract.functions.grantAccess(
            grantee, patient_key, study_key or ZERO_KEY, expires_at
        )
        anchor = self._transact(call)
        receipt = self.w3.eth.get_transaction_receipt(anchor.tx_hash)  # type: ignore[arg-type]
        events = self.contract.events.AccessGranted().process_receipt(receipt)
        return int(events[0]["args"]["grantId"]), anchor

    def revoke_access(self, grant_id: int) -> Anchor:
        """Revoke grant ``grant_id`` now (its granter or the admin)."""
        return self._transact(self.contract.functions.revokeAccess(grant_id))

    def grant_role(self, role: str, account: str) -> Anchor:
        """OpenZeppelin's raw ``grantRole`` (for the admin role itself)."""
        fn = self.contract.functions.grantRole(
            self.role_id(role), Web3.to_checksum_address(account)
        )
        return self._transact(fn)

    # -- reads ---------------------------------------------------------------------------

    def _call(self, fn: Any) -> Any:
        return translate(self._decoder, fn.call)

    def role_id(self, role: str) -> bytes:
        """The bytes32 id of ``admin``, ``hospital``, ``doctor``, ``recorder`` or ``auditor``."""
        return role_id(role)

    def has_role(self, role: str, account: str) -> bool:
        fn = self.contract.functions.hasRole(self.role_id(role), Web3.to_checksum_address(account))
        return bool(self._call(fn))

    def roles_of(self, account: str) -> list[str]:
        """Every role ``account`` holds, by name."""
        names = ("admin", "hospital", "doctor", "recorder", "auditor")
        return [name for name in names if self.has_role(name, account)]

    def name_of(self, account: str) -> str:
        return str(self._call(self.contract.functions.nameOf(Web3.to_checksum_address(account))))

    def owner_of(self, record_key: bytes) -> str | None:
        """The account that owns ``record_key`` (checksummed), or None if the key is unknown."""
        owner = str(self._call(self.contract.functions.ownerOf(record_key)))
        return None if int(owner, 16) == 0 else Web3.to_checksum_address(owner)

    def image_of(self, record_key: bytes) -> Image | None:
        """The image under ``record_key``, or None if it was never recorded."""
        try:
            raw = self._call(self.contract.functions.imageOf(record_key))
        except errors.XrayUnknownRecord:
            return None
        current, versions, retired, retired_by, retired_at, reason = raw
        return Image(
            record_key=record_key,
            current=_version(current),
            versions=int(versions),
            retired=bool(retired),
            retired_by=retired_by if retired else None,
            retired_at=int(retired_at) if retired else None,
            retire_reason=retire_reason_name(reason),
        )

    def version_events(self, record_key: bytes) -> list[LedgerEvent]:
        """The ``ImageRecorded``/``ImageSuperseded`` events of every version stored under
        ``record_key``, oldest first, whoever wrote them.

        ``versionOf`` says in which block each version was mined, so only those blocks are
        read (one single-block ``eth_getLogs`` per event name and block), not the chain since
        the deployment in :attr:`log_range` windows: a verdict costs the same on a chain a
        year old as on a new one.
        """
        image = self.image_of(record_key)
        if image is None:
            return []
        blocks = sorted(
            {self.version_of(record_key, v).block_number for v in range(1, image.versions + 1)}
        )
        found = [
            event
            for block in blocks
            for name in ("ImageRecorded", "ImageSuperseded")
            for event in self.events(
                name, from_block=block, to_block=block, filters={"recordKey": record_key}
            )
        ]
        return sorted(found, key=lambda event: (event.block_number, event.log_index))

    def retirement_events(self, record_key: bytes) -> list[LedgerEvent]:
        """The ``ImageRetired`` events of ``record_key``, oldest first.

        The chain is read only when a retirement can be standing: the key's image says it is
        retired, or the key has no stored version but an owner (a batched key is retired
        through its proof, which settles its owner). A key with neither has none that count:
        a displaced squatter's retirement is cleared with its ownership.
        """
        image = self.image_of(record_key)
        if image is not None and not image.retired:
            return []
        if image is None and self.owner_of(record_key) is None:
            return []
        return self.events("ImageRetired", filters={"recordKey": record_key})

    def retirement_of(self, record_key: bytes) -> Retirement | None:
        """Whether (and by whom, when, why) the record under ``record_key`` was retired.

        The reason is its lowercase name (``"wrong_patient"``).
        """
        image = self.image_of(record_key)
        if image is None:  # a batched image has no record; its retirement is an event, the
            # newest one (a squatter's retirement, made void by the owner, comes before it)
            for event in reversed(self.retirement_events(record_key)):
                return Retirement(
                    by=str(event.args["by"]), at=self.block_time(event.block_number),
                    reason=retire_reason_name(event.args["reason"]),
                )  # fmt: skip
            return None
        if not image.retired:
            return None
        return Retirement(
            by=str(image.retired_by), at=int(image.retired_at or 0), reason=image.retire_reason
        )

    def version_of(self, record_key: bytes, version: int) -> ImageVersion:
        """Version ``version`` (1-based) of the image under ``record_key``."""
        return _version(self._call(self.contract.functions.versionOf(record_key, version)))

    def batch_of(self, batch_id: int) -> Batch:
        root, count, recorder, anchored_at, block_number = self._call(
            self.contract.functions.batchOf(batch_id)
        )
        return Batch(
            batch_id=batch_id,
            root=bytes(root),
            count=int(count),
            recorder=str(recorder),
            anchored_at=int(anchored_at),
            block_number=int(block_number),
        )

    def batch_kind_of(self, batch_id: int) -> str:
        """``"image"`` or ``"access"``: what batch ``batch_id`` anchors."""
        return BATCH_KINDS[int(self._call(self.contract.functions.batchKindOf(batch_id)))]

    def batch_id_of(self, root: bytes) -> int:
        """The id of the batch that anchored ``root``, or 0."""
        return int(self._call(self.contract.functions.batchIdOf(root)))

    def batch_count(self) -> int:
        return int(self._call(self.contract.functions.batchCount()))

    def verify_batch_member(self, *, leaf: bytes, proof: InclusionProof, batch_id: int) -> bool:
        """True when ``leaf`` is in batch ``batch_id`` by ``proof`` (:func:`gateway.core.merkle.in_batch`)."""
        try:
            batch = self.batch_of(batch_id)
        except errors.XrayUnknownBatch:
            return False
        return in_batch(leaf=leaf, proof=proof, root=batch.root, count=batch.count)

    def grant_of(self, grant_id: int) -> Grant:
        """Grant ``grant_id`` as the chain holds it."""
        raw = self._call(self.contract.functions.grantOf(grant_id))
        grantee, patient_key, study_key, granter, expires, granted, revoked_by, revoked_at = raw
        revoked = int(revoked_at) != 0
        return Grant(
            grant_id=grant_id,
            grantee=bytes(grantee),
            patient_key=bytes(patient_key),
            study_key=bytes(study_key) if bytes(study_key) != ZERO_KEY else None,
            granter=str(granter),
            expires_at=int(expires),
            granted_at=int(granted),
            revoked_by=str(revoked_by) if revoked else None,
            revoked_at=int(revoked_at) if revoked else None,
        )

    def grants_of(self, key: bytes) -> list[int]:
        """The ids of the grants on a patient key (all of them) or a study key."""
        return [int(i) for i in self._call(self.contract.functions.grantsOf(key))]

    def xrayhash_count(self, patient_key: bytes) -> int:
        """Seed parity: how many image versions ``patient_key`` has."""
        return int(self._call(self.contract.functions.getXrayhashCount(patient_key)))

    def xrayhash(self, patient_key: bytes, index: int) -> tuple[str, str, bytes]:
        """Seed parity: (recorder name, body part, digest) of the ``index``-th version."""
        name, part, digest = self._call(self.contract.functions.getXrayhash(patient_key, index))
        return str(name), str(part), bytes(digest)

    def events(
        self,
        name: str,
        *,
        from_block: int = 0,
        to_block: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[LedgerEvent]:
        """The contract's ``name`` events, oldest first, optionally filtered on indexed args.

        The blocks from ``from_block`` (never before the deployment block) to ``to_block``
        (default: the head) are read in windows of at most :attr:`log_range` blocks, one
        ``eth_getLogs`` each, so that a node with a log-range limit (Besu) answers.
        """
        event = getattr(self.contract.events, name)
        start = max(from_block, self.from_block)
        end = to_block if to_block is not None else self.head_block()
        found: list[LedgerEvent] = []
        for low, high in block_windows(start, end, self.log_range):
            query = partial(
                event().get_logs, from_block=low, to_block=high, argument_filters=filters or None
            )
            found += [
                LedgerEvent(
                    name=name,
                    args=dict(log["args"]),
                    tx_hash="0x" + bytes(log["transactionHash"]).hex(),
                    block_number=int(log["blockNumber"]),
                    log_index=int(log["logIndex"]),
                )
                for log in translate(self._decoder, query)
            ]
        return found

    # -- the chain under the contract ------------------------------------------------------

    def head_block(self) -> int:
        """The number of the chain's newest block."""
        return int(translate(self._decoder, lambda: self.w3.eth.block_number))

    def block_time(self, block_number: int) -> int:
        """The timestamp (epoch seconds) of block ``block_number``."""
        block = translate(self._decoder, lambda: self.w3.eth.get_block(block_number))
        return int(block["timestamp"])

    def chain_id(self) -> int:
        """The chain's id (EIP-155), as a receipt names it."""
        return int(translate(self._decoder, lambda: self.w3.eth.chain_id))

    def transaction_block(self, tx_hash: str) -> tuple[int, str]:
        """(number, hash) of the block that mined ``tx_hash``.

        Raises
        ------
        TransactionFailed
            The chain holds no mined transaction ``tx_hash``.
        """
        try:
            receipt = translate(
                self._decoder,
                lambda: self.w3.eth.get_transaction_receipt(tx_hash),  # type: ignore[arg-type]
            )
        except TransactionNotFound:
            raise errors.TransactionFailed("no such mined transaction", tx_hash=tx_hash) from None
        return int(receipt["blockNumber"]), "0x" + bytes(receipt["blockHash"]).hex()

    def block_hash(self, block_number: int) -> str:
        """The hash of block ``block_number`` on the chain as it stands."""
        block = translate(self._decoder, lambda: self.w3.eth.get_block(block_number))
        return "0x" + bytes(block["hash"]).hex()

    def has_transaction(self, tx_hash: str) -> bool:
        """Whether the chain holds a mined transaction ``tx_hash`` (it has a receipt)."""
        try:
            translate(
                self._decoder,
                lambda: self.w3.eth.get_transaction_receipt(tx_hash),  # type: ignore[arg-type]
            )
        except TransactionNotFound:
            return False
        return True

    def code_matches_artifact(self) -> bool:
        """Whether the runtime code at the address is the committed artifact's."""
        code = bytes(translate(self._decoder, lambda: self.w3.eth.get_code(self.address)))
        return runtime_code_matches(code, load_artifact()["deployedBytecode"])

    def info(self) -> dict[str, Any]:
        """A summary for ``contract info``: address, chain, compiler, counts."""
        artifact = load_artifact()
        return {
            "address": self.address,
            "chain_id": self.w3.eth.chain_id,
            "block": self.w3.eth.block_number,
            "compiler": artifact["compiler"]["version"],
            "sources_hash": artifact["sourcesHash"],
            "code_matches_artifact": self.code_matches_artifact(),
            "batches": self.batch_count(),
        }


def _batched_leaf(leaf: BatchedLeaf) -> tuple[Any, ...]:
    """The contract's ``BatchedLeaf`` tuple for ``leaf``."""
    return (
        leaf.patient_key, leaf.digest, leaf.pixel_digest, leaf.batch_id, leaf.proof.index,
        list(leaf.proof.path),
    )  # fmt: skip


def block_windows(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """``[start, end]`` cut into inclusive windows of at most ``size`` blocks, in order."""
    return [(low, min(end, low + size - 1)) for low in range(start, end + 1, size)]


def strip_metadata(code: bytes) -> bytes:
    """Runtime code without solc's CBOR metadata tail (its last two bytes give its length).

    The tail hashes the sources and compiler settings, not what the code does: two
    builds that differ only there run the same instructions.
    """
    if len(code) < 2:
        return code
    length = int.from_bytes(code[-2:], "big")
    body = len(code) - 2 - length
    # solc's tail is a CBOR map (0xa1..0xb7); anything else is not a metadata tail.
    if body < 0 or not 0xA1 <= code[body] <= 0xB7:
        return code
    return code[:body]


def runtime_code_matches(code: bytes, artifact_hex: str) -> bool:
    """Whether ``code`` (``eth_getCode``) is the artifact's ``deployedBytecode``.

    Compared without the metadata tail. The xray contract has no immutables, so nothing
    else of the deployed code differs from the artifact's.
    """
    expected = bytes.fromhex(artifact_hex.removeprefix("0x"))
    return bool(code) and strip_metadata(code) == strip_metadata(expected)


def _version(raw: Any) -> ImageVersion:
    digest, pixel_digest, patient_key, recorder, recorded_at, block_number, body_part, modality = (
        raw
    )
    return ImageVersion(
        digest=bytes(digest),
        pixel_digest=bytes(pixel_digest),
        patient_key=bytes(patient_key),
        recorder=str(recorder),
        recorded_at=int(recorded_at),
        block_number=int(block_number),
        body_part=str(body_part),
        modality=str(modality),
    )
