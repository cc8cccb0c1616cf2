"""The anchor stage: one ``recordImage``/``supersedeImage`` per image (batching plugs in beside it)."""

from __future__ import annotations

from web3.exceptions import TransactionNotFound

from gateway.errors import LedgerError
from gateway.ledger import XrayLedger
from gateway.pipeline import AnchorItem, AnchorResult


class SingleAnchorer:
    """Records each image in its own transaction, idempotently.

    Before sending, the record is looked up: if the ledger already holds this digest under
    this key (a crash between send and receipt, or the same bytes from another gateway),
    the existing transaction is the evidence and nothing is sent again.
    """

    def __init__(self, ledger: XrayLedger) -> None:
        if ledger.sender is None:
            raise ValueError("the anchorer needs a ledger client with the recorder's account")
        self.ledger = ledger

    def anchor(self, item: AnchorItem) -> AnchorResult:
        image = self.ledger.image_of(item.record_key)
        send = self.ledger.record_image
        if image is not None:
            existing = self._find(item)
            if existing is not None:
                return existing
            if image.retired:
                raise LedgerError("the record is retired on the ledger; a new version cannot be anchored")
            send = self.ledger.supersede_image
        anchor = send(
            record_key=item.record_key,
            patient_key=item.patient_key,
            digest=item.digest,
            pixel_digest=item.pixel_digest,
            body_part=item.body_part,
            modality=item.modality,
        )
        assert self.ledger.sender is not None
        return AnchorResult(
            tx_hash=anchor.tx_hash,
            block_number=anchor.block_number,
            block_time=anchor.block_time,
            recorder=self.ledger.sender.address,
        )

    def confirmed(self, tx_hash: str) -> bool:
        """True when the chain holds ``tx_hash`` and it succeeded (a lost block has no receipt)."""
        try:
            receipt = self.ledger.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return int(receipt["status"]) == 1

    def _find(self, item: AnchorItem) -> AnchorResult | None:
        """The transaction that already recorded ``item.digest`` under its key, if any."""
        for name in ("ImageRecorded", "ImageSuperseded"):
            for event in self.ledger.events(name, filters={"recordKey": item.record_key}):
                if event.args["digest"] == item.digest:
                    block = self.ledger.w3.eth.get_block(event.block_number)
                    return AnchorResult(
                        tx_hash=event.tx_hash,
                        block_number=event.block_number,
                        block_time=int(block["timestamp"]),
                        recorder=str(event.args["recorder"]),
                    )
        return None
