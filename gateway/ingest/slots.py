"""Association slots counted over every listener process of one node (``GATEWAY_LISTENERS``).

With several listener processes on one DICOM port (``SO_REUSEPORT``), each process sees
only the connections the kernel gave it, so ``GATEWAY_MAX_ASSOCIATIONS`` and
``GATEWAY_MAX_ASSOCIATIONS_PER_HOST`` counted in memory would allow that many *per
process*. Here a slot is an exclusive ``flock`` on one of a fixed set of files in the
node's run dir: ``<port>-all.<k>`` (k below the node's total) and
``<port>-host-<digest>.<k>`` (k below the per-address cap; the digest names the peer
address in a file name). Taking a slot locks the first free file of each set; giving it
back closes the descriptors. The kernel drops the locks of a process that dies, however it
dies, so a dead listener never keeps a slot.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


class SharedSlots:
    """The node's association slots on one port, shared by its listener processes.

    Parameters
    ----------
    directory:
        Where the slot files live (the node's run dir; created if missing).
    port:
        The port the slots count (plain DICOM and DICOM TLS count apart).
    total, per_host:
        ``GATEWAY_MAX_ASSOCIATIONS`` and ``GATEWAY_MAX_ASSOCIATIONS_PER_HOST``.
    """

    def __init__(self, directory: Path, *, port: int, total: int, per_host: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port
        self.total = total
        self.per_host = per_host

    def take(self, host: str) -> tuple[int, int] | str:
        """A slot of the node's total and one of ``host``'s (two held descriptors), or why
        none is free (the setting that is reached)."""
        node = self._lock_one(f"{self.port}-all", self.total)
        if node is None:
            return f"GATEWAY_MAX_ASSOCIATIONS ({self.total}) reached over the node's listeners"
        digest = hashlib.sha256(host.encode()).hexdigest()[:16]
        mine = self._lock_one(f"{self.port}-host-{digest}", self.per_host)
        if mine is None:
            os.close(node)
            return (
                f"GATEWAY_MAX_ASSOCIATIONS_PER_HOST ({self.per_host}) reached for {host} over"
                " the node's listeners"
            )
        return node, mine

    @staticmethod
    def give_back(held: tuple[int, int]) -> None:
        """Free a slot :meth:`take` gave (closing the descriptors drops the locks)."""
        for fd in held:
            os.close(fd)

    def _lock_one(self, prefix: str, count: int) -> int | None:
        """The descriptor of the first of ``count`` slot files this call could lock."""
        for k in range(count):
            fd = os.open(self.directory / f"{prefix}.{k}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None
