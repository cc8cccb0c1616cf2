"""The anchor stage: Merkle batches of many images per ``recordBatch``, or one record per image."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from web3.exceptions import TransactionNotFound

from gateway.core.merkle import MerkleTree, encode_proof, leaf_hash
from gateway.errors import (
    LedgerError,
    TransactionPending,
    XrayBatchExists,
    XrayRecordExists,
    XrayUnchangedDigest,
)
from gateway.index.db import Index, PendingBatch
from gateway.ingest.stages import AnchorItem, AnchorResult
from gateway.ledger import Anchor, BatchedLeaf, XrayLedger

log = logging.getLogger(__name__)


class SingleAnchorer:
    """Records each image in its own transaction, idempotently.

    Before sending, the record is looked up: if the ledger already holds this digest under
    this key (a crash between send and receipt, or the same bytes from another gateway),
    the existing transaction is the evidence and nothing is sent again.

    The call depends on how the key was anchored before: ``recordImage`` for a new key,
    ``supersedeImage`` for a key recorded on its own, and ``supersedeBatchedImage`` with
    the inclusion proof of its first anchoring for a key whose first version was batched
    (the contract owns a batched key to the batch's recorder only once it is shown).
    """

    def __init__(self, ledger: XrayLedger) -> None:
        if ledger.sender is None:
            raise ValueError("the anchorer needs a ledger client with the recorder's account")
        self.ledger = ledger

    def anchor(self, item: AnchorItem, *, batched: BatchedLeaf | None = None) -> AnchorResult:
        """Anchor ``item``; ``batched`` is the key's first anchoring, if that was in a batch."""
        image = self.ledger.image_of(item.record_key)
        if image is not None:
            existing = self._find(item)
            if existing is not None:
                return existing
            if image.retired:
                raise LedgerError(
                    "the record is retired on the ledger; a new version cannot be anchored"
                )
        try:
            anchor = self._send(item, recorded=image is not None, batched=batched)
        except (XrayRecordExists, XrayUnchangedDigest) as exc:  # gas is estimated against
            existing = self._find(item)  # the pending block: the same version waits there
            if existing is not None:  # mined between the look-up and the send
                return existing
            raise TransactionPending(
                "a record of this key waits in the node's pool, not mined yet"
            ) from exc
        assert self.ledger.sender is not None
        return AnchorResult(
            tx_hash=anchor.tx_hash,
            block_number=anchor.block_number,
            block_time=anchor.block_time,
            recorder=self.ledger.sender.address,
        )

    def _send(self, item: AnchorItem, *, recorded: bool, batched: BatchedLeaf | None) -> Anchor:
        """The one transaction that anchors ``item``, by how its key was anchored before."""
        if batched is not None:
            return self.ledger.supersede_batched_image(
                record_key=item.record_key, leaf=batched, patient_key=item.patient_key,
                digest=item.digest, pixel_digest=item.pixel_digest, body_part=item.body_part,
                modality=item.modality,
            )  # fmt: skip
        send = self.ledger.supersede_image if recorded else self.ledger.record_image
        return send(
            record_key=item.record_key, patient_key=item.patient_key, digest=item.digest,
            pixel_digest=item.pixel_digest, body_part=item.body_part, modality=item.modality,
        )  # fmt: skip

    def confirmed(self, tx_hash: str) -> bool:
        """True when the chain holds ``tx_hash`` and it succeeded (a lost block has no receipt)."""
        try:
            receipt = self.ledger.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return int(receipt["status"]) == 1

    def _find(self, item: AnchorItem) -> AnchorResult | None:
        """The transaction that already recorded ``item.digest`` under its key, if any."""
        for event in self.ledger.version_events(item.record_key):
            if event.args["digest"] == item.digest:
                block = self.ledger.w3.eth.get_block(event.block_number)
                return AnchorResult(
                    tx_hash=event.tx_hash,
                    block_number=event.block_number,
                    block_time=int(block["timestamp"]),
                    recorder=str(event.args["recorder"]),
                )
        return None


class Gatherer:
    """When to cut a batch (pure): it keeps filling while images stream in, up to a limit.

    :meth:`offer` is given, each time round, the rows that may join a batch now (oldest
    first) and whether more rows are on their way to the anchor stage (received, not yet
    fingerprinted, sealed or stored); a row is timed from the first offer that held it,
    and a row no longer offered is forgotten. :meth:`take` cuts a batch when one is due:

    - ``max_size`` rows wait (``GATEWAY_BATCH_MAX``); or
    - the oldest has waited ``max_delay_s`` (the latency limit,
      ``GATEWAY_ANCHOR_MAX_DELAY_MS``), however many are still on their way; or
    - the stream has ended: nothing is on its way and no row joined for ``quiet_s``
      (``GATEWAY_BATCH_WINDOW_MS``), which leaves room for the next image of a modality
      that pauses between studies.

    With ``max_delay_s`` at or below ``quiet_s`` the window is fixed: a batch is cut
    ``max_delay_s`` after its oldest row arrived, whatever streams in.
    """

    def __init__(self, *, max_size: int, quiet_s: float, max_delay_s: float) -> None:
        if max_size < 1:
            raise ValueError("a batch holds at least one image")
        self.max_size = max_size
        self.quiet_s = max(0.0, quiet_s)
        self.max_delay_s = max(0.0, max_delay_s)
        self._since: dict[int, float] = {}
        self._streaming = False

    def offer(self, row_ids: Sequence[int], now: float, *, streaming: bool = False) -> None:
        """The rows that may join a batch now, oldest first; ``streaming``: more are coming."""
        since = self._since
        self._since = {row_id: since.get(row_id, now) for row_id in row_ids}
        self._streaming = streaming

    def __len__(self) -> int:
        return len(self._since)

    def take(self, now: float) -> list[int] | None:
        """The next batch's row ids in leaf order, or None if none is due yet."""
        if not self._since:
            return None
        if len(self._since) < self.max_size and now < self._due_at():
            return None
        chosen = list(self._since)[: self.max_size]
        for row_id in chosen:
            del self._since[row_id]
        return chosen

    def wait_s(self, now: float) -> float | None:
        """Seconds until a batch is due by time (None: nobody waits)."""
        if not self._since:
            return None
        return max(0.0, self._due_at() - now)

    def _due_at(self) -> float:
        """When the waiting rows make a batch unless more join: the limit, or the quiet end."""
        times = self._since.values()
        due = min(times) + self.max_delay_s
        if not self._streaming:
            due = min(due, max(times) + self.quiet_s)
        return due


def leaf_of(item: AnchorItem) -> bytes:
    """The image's leaf in a batch tree (DESIGN.md: H(0x00 ‖ keys ‖ digests))."""
    return leaf_hash(
        record_key=item.record_key, patient_key=item.patient_key, digest=item.digest,
        pixel_digest=item.pixel_digest,
    )  # fmt: skip


class BatchAnchorer:
    """Anchors many images with one ``recordBatch(root, count)``, idempotently.

    :meth:`open` persists the batch (root, count, members in leaf order) in the index
    *before* anything is sent; :meth:`land` asks the chain ``batchIdOf(root)`` first, so
    a batch whose transaction landed before a crash or a lost receipt is never sent
    again, and a batch that failed is re-sent whole: same members, same root.

    Parameters
    ----------
    ledger:
        The contract, with the recorder's account.
    index:
        Where open batches are persisted.
    max_size, window_ms, max_delay_ms:
        When a batch is cut (:class:`Gatherer`): at ``max_size`` images; ``max_delay_ms``
        after its oldest image reached the anchor stage; or once no image is on its way
        and none joined for ``window_ms``. ``max_delay_ms`` None: ``window_ms``, a fixed
        window.
    """

    def __init__(
        self, ledger: XrayLedger, index: Index, *, max_size: int, window_ms: int,
        max_delay_ms: int | None = None,
    ) -> None:  # fmt: skip
        if ledger.sender is None:
            raise ValueError("the anchorer needs a ledger client with the recorder's account")
        self.ledger = ledger
        self.index = index
        self.max_size = max_size
        self.quiet_s = window_ms / 1000.0
        self.max_delay_s = (window_ms if max_delay_ms is None else max_delay_ms) / 1000.0

    def gatherer(self) -> Gatherer:
        """The size and time policy the batch thread cuts batches by."""
        return Gatherer(max_size=self.max_size, quiet_s=self.quiet_s, max_delay_s=self.max_delay_s)

    def open(self, members: Sequence[tuple[int, AnchorItem]]) -> PendingBatch:
        """Build the tree over ``members`` (row id, item) and persist the batch."""
        tree = MerkleTree([leaf_of(item) for _, item in members])
        return self.index.open_batch(root=tree.root, members=[row_id for row_id, _ in members])

    def land(self, batch: PendingBatch, items: Sequence[AnchorItem]) -> list[AnchorResult]:
        """Anchor ``batch`` (its items in leaf order) unless the chain already holds its root.

        Returns one result per item, with the batch id, leaf index and encoded proof.

        Raises
        ------
        LedgerError
            The items no longer give the persisted root, or the chain refused the batch.
        """
        tree = MerkleTree([leaf_of(item) for item in items])
        if tree.root != batch.root or tree.size != batch.count:
            raise LedgerError(f"batch {batch.id}: its members no longer give the persisted root")
        batch_id = self.ledger.batch_id_of(batch.root)
        if batch_id:
            log.info("batch %d is already on chain as batch %d: not sent again", batch.id, batch_id)
        else:
            try:
                batch_id, _ = self.ledger.record_batch(root=batch.root, count=batch.count)
            except XrayBatchExists:  # sent before a crash, mined meanwhile
                batch_id = self.ledger.batch_id_of(batch.root)
                if not batch_id:  # in the node's pool (gas is estimated against pending)
                    raise TransactionPending(
                        f"batch {batch.id} waits in the node's pool, not mined yet"
                    ) from None
                log.info("batch %d was mined meanwhile as batch %d", batch.id, batch_id)
        on_chain = self.ledger.batch_of(batch_id)
        if on_chain.count != batch.count:
            raise LedgerError(
                f"batch {batch_id} on chain holds {on_chain.count} leaves, not {batch.count}"
            )
        events = self.ledger.events(
            "BatchAnchored",
            from_block=on_chain.block_number,
            to_block=on_chain.block_number,
            filters={"batchId": batch_id},
        )
        tx_hash = events[0].tx_hash if events else ""
        return [
            AnchorResult(
                tx_hash=tx_hash,
                block_number=on_chain.block_number,
                block_time=on_chain.anchored_at,
                recorder=on_chain.recorder,
                batch_id=batch_id,
                leaf_index=i,
                proof=encode_proof(tree.proof(i)),
            )
            for i in range(tree.size)
        ]
