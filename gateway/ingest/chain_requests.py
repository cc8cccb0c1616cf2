"""The chain-request queue: the API's and the CLI's chain writes, sent by the anchoring worker.

One recorder account has one sender: the node's anchoring worker process, whose
:class:`~gateway.ledger.sender.Sender` hands out the account's nonces. Grants, revocations
and erasure's retirements asked for elsewhere (the API in ``up``, the CLI) are not sent from
there with a second sender of the same account: :class:`QueuedChain` writes them to the
index's ``chain_requests`` (``gateway/index/chain_requests.py``), rings the workers (the
listener's wake-up, ``ingest/wakeup.py``) and waits, bounded, for the outcome;
:class:`ChainRequestLoop`, a thread of the anchoring process, claims them in id order and
sends them through that process's ledger client, the one the pipeline anchors with.

::

    API / CLI ──enqueue──▶ index: chain_requests (queued) ──ring──▶ anchoring worker
        ▲                                                            ChainRequestLoop
        └──── wait (GATEWAY_CHAIN_REQUEST_WAIT_S) ◀── done: tx, block, result ─┘ (same Sender)

The index row a request leads to is written by the worker once its transaction is mined (a
grant's row, a revocation's mark), so a caller that stopped waiting loses nothing: the
write lands, and shows where it belongs (e.g. ``GET /v1/grants``).

A retirement is queued for the record's owner on chain (``ownerOf``, or the recorder of
the batch that anchored it when its proof was never shown): the contract lets only that
account retire it, so the worker holding that account's key sends it, on whichever node
that is. An erasure confirmed on one node thus retires the records every node anchored;
while the owner's node is down its retirements wait in the queue (the caller gets
:class:`~gateway.errors.ChainRequestPending` and confirms again later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.merkle import InclusionProof, decode_proof, encode_proof
from gateway.errors import ChainRequestFailed, ChainRequestPending, ChainUnavailable
from gateway.index import chain_requests as queue
from gateway.index.db import Index
from gateway.ledger.client import XrayLedger
from gateway.ledger.types import Anchor, Retirement, RetireReason
from gateway.trust.grants import Grants, PendingGrant

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How often a waiting caller reads its request's row."""


@dataclass(frozen=True)
class SentRequest:
    """What a sent request left on chain: its transaction and its result (a grant id)."""

    tx_hash: str | None
    block_number: int | None
    result: int | None


def _anchored(anchor: Anchor) -> SentRequest:
    return SentRequest(anchor.tx_hash, anchor.block_number, None)


class ChainRequestLoop:
    """The anchoring process's thread that sends the queued requests of node ``node``.

    Parameters
    ----------
    index:
        The index holding the queue.
    ledger:
        The process's recorder client, the pipeline's own (one account, one sender).
    grants:
        Grants writing with ``ledger`` (no queue): a grant's row once it is mined.
    node, worker:
        The node whose requests it sends, and the claimer's name.
    recorder:
        The account ``ledger`` sends with: the requests for it are sent here too, whichever
        node queued them (None: the node's own requests only).
    """

    def __init__(
        self, *, index: Index, ledger: XrayLedger, grants: Grants, node: str, worker: str,
        recorder: str | None = None, poll_s: float = 0.5,
    ) -> None:  # fmt: skip
        self.index = index
        self.ledger = ledger
        self.grants = grants
        self.node = node
        self.worker = worker
        self.recorder = recorder
        self.poll_s = poll_s
        self.sent = 0
        self.failed = 0
        self._rung = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chain-requests", daemon=True)
        self._send: dict[str, Callable[[dict[str, Any]], SentRequest]] = {
            "grant": self._grant,
            "revoke": self._revoke,
            "retire": self._retire,
            "retire_batched": self._retire_batched,
        }

    def start(self) -> None:
        """Fail what a dead predecessor left in flight, then serve the queue."""
        left = queue.interrupted(self.index, node=self.node, recorder=self.recorder)
        if left:
            log.warning("%d chain request(s) were in flight when the last worker stopped", left)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (a caller rang)."""
        self._rung.set()

    def stop(self) -> None:
        self._stop.set()
        self._rung.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while not self._stop.is_set() and self.step():
                    pass
            except Exception as exc:  # the index is out: try again at the next round
                log.warning("chain requests: %s: %s", type(exc).__name__, exc)
            self._rung.wait(self.poll_s)
            self._rung.clear()

    def step(self) -> bool:
        """Send the oldest queued request, if any, and settle it; False: none was queued."""
        request = queue.claim(
            self.index, node=self.node, worker=self.worker, recorder=self.recorder
        )
        if request is None:
            return False
        try:
            outcome = self._send[request.kind](request.payload)
        except ChainUnavailable:
            queue.requeue(self.index, request.id)  # nothing was sent: the next round
            self._stop.wait(self.poll_s)
            return False
        except Exception as exc:  # refused, or a fault: settled as failed, never stuck sending
            self.failed += 1
            log.warning("chain request %d (%s) refused: %s", request.id, request.kind,
                        type(exc).__name__)  # fmt: skip
            queue.fail(self.index, request.id, error_type=type(exc).__name__, error=str(exc))
            return True
        self.sent += 1
        queue.finish(
            self.index, request.id, tx_hash=outcome.tx_hash, block_number=outcome.block_number,
            result=outcome.result,
        )  # fmt: skip
        return True

    def _grant(self, payload: dict[str, Any]) -> SentRequest:
        row = self.grants.write_grant(PendingGrant.of(payload))
        return SentRequest(row.tx_hash, row.block_number, row.id)

    def _revoke(self, payload: dict[str, Any]) -> SentRequest:
        row = self.grants.revoke(int(payload["grant_id"]), by=str(payload["by"]))
        return SentRequest(row.revoke_tx, None, row.id)

    def _retire(self, payload: dict[str, Any]) -> SentRequest:
        return _anchored(
            self.ledger.retire_image(
                record_key=bytes.fromhex(payload["record_key"]), reason=payload["reason"]
            )
        )

    def _retire_batched(self, payload: dict[str, Any]) -> SentRequest:
        return _anchored(
            self.ledger.retire_batched_image(
                record_key=bytes.fromhex(payload["record_key"]),
                patient_key=bytes.fromhex(payload["patient_key"]),
                digest=bytes.fromhex(payload["digest"]),
                pixel_digest=bytes.fromhex(payload["pixel_digest"]),
                batch_id=int(payload["batch_id"]),
                proof=decode_proof(bytes.fromhex(payload["proof"])),
                reason=payload["reason"],
            )
        )


class QueuedChain:
    """The API's and the CLI's chain writes, queued for the node's anchoring worker.

    It is what :class:`~gateway.trust.grants.Grants` calls as its ``queue`` and what
    erasure calls as its ``ledger`` (``retirement_of`` is read from ``reader``; the
    retirements are queued).

    Parameters
    ----------
    index:
        The index holding the queue.
    node:
        This node: its anchoring worker sends with this node's recorder key.
    ring:
        Wakes the anchoring worker (the listener's doorbell, or the loop's own ``wake`` in
        a process that anchors).
    reader:
        The contract, for reads (erasure's ``retirement_of``); None: grants only.
    wait_s:
        How long a caller waits for the outcome before :class:`ChainRequestPending`.
    """

    def __init__(
        self, *, index: Index, node: str, ring: Callable[[], None],
        reader: XrayLedger | None = None, wait_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.index = index
        self.node = node
        self.ring = ring
        self.reader = reader
        self.wait_s = wait_s

    def request(self, request_id: int) -> queue.ChainRequest | None:
        """A queued write by its id, and its outcome once settled (None: no such id)."""
        return queue.get(self.index, request_id)

    def call(self, kind: str, payload: dict[str, Any], *, by: str) -> int:
        """Queue ``kind`` with ``payload``, wait until it is mined; its result (a grant id,
        or 0 when the call has none)."""
        request = self.settle(kind, payload, by=by)
        return request.result or 0

    def settle(
        self, kind: str, payload: dict[str, Any], *, by: str, recorder: str | None = None
    ) -> queue.ChainRequest:
        """Queue, ring, and wait (bounded) for the request to be done; ``recorder``: only
        that account may send it (its node's worker does).

        Raises
        ------
        ChainRequestFailed
            It was refused; ``.error_type`` names why.
        ChainRequestPending
            Not settled within ``wait_s``: it stays queued, and its outcome will be kept.
        """
        request_id = queue.enqueue(
            self.index, node=self.node, kind=kind, payload=payload, asked_by=by,
            recorder=recorder,
        )  # fmt: skip
        self.ring()
        deadline = time.monotonic() + self.wait_s
        while True:
            found = queue.get(self.index, request_id)
            if found is not None and found.settled:
                break
            if time.monotonic() >= deadline:
                sender = "this node's" if recorder is None else f"recorder {recorder}'s node's"
                raise ChainRequestPending(
                    f"chain request {request_id} ({kind}) is queued for {sender} anchoring"
                    f" worker and not mined after {self.wait_s:g} s; it stays queued",
                    request_id=request_id,
                )
            time.sleep(POLL_S)
        if found.state == queue.FAILED:
            raise ChainRequestFailed(
                f"chain request {request_id} ({kind}) was refused: {found.error_type}:"
                f" {found.error}",
                error_type=found.error_type or "",
            )
        return found

    # -- what erasure calls (gateway.trust.erasure.Retirements) --------------------------

    def retirement_of(self, record_key: bytes) -> Retirement | None:
        if self.reader is None:
            raise ChainUnavailable("this queue has no chain reader")
        return self.reader.retirement_of(record_key)

    def retire_image(self, *, record_key: bytes, reason: RetireReason | str) -> Anchor:
        payload = {"record_key": record_key.hex(), "reason": _reason(reason)}
        owner = self._owner(record_key)
        return self._anchor(self.settle("retire", payload, by="erasure", recorder=owner))

    def retire_batched_image(
        self, *, record_key: bytes, patient_key: bytes, digest: bytes, pixel_digest: bytes,
        batch_id: int, proof: InclusionProof, reason: RetireReason | str,
    ) -> Anchor:  # fmt: skip
        payload = {
            "record_key": record_key.hex(), "patient_key": patient_key.hex(),
            "digest": digest.hex(), "pixel_digest": pixel_digest.hex(), "batch_id": batch_id,
            "proof": encode_proof(proof).hex(), "reason": _reason(reason),
        }  # fmt: skip
        owner = self._owner(record_key, batch_id=batch_id)
        return self._anchor(self.settle("retire_batched", payload, by="erasure", recorder=owner))

    def _owner(self, record_key: bytes, *, batch_id: int | None = None) -> str | None:
        """The account the contract lets retire ``record_key``: its owner, or, for a batched
        record whose proof was never shown, the batch's recorder (None: no chain reader,
        the node's own worker sends it)."""
        if self.reader is None:
            return None
        owner = self.reader.owner_of(record_key)
        if owner is None and batch_id is not None:
            owner = self.reader.batch_of(batch_id).recorder
        return owner

    @staticmethod
    def _anchor(request: queue.ChainRequest) -> Anchor:
        """The settled request as an anchor (its block time and gas are not kept)."""
        return Anchor(request.tx_hash or "", request.block_number or 0, 0, 0)


def _reason(reason: RetireReason | str) -> str:
    """A retire reason as the ledger client parses it back (its lowercase name)."""
    return RetireReason.parse(reason).name.lower()
