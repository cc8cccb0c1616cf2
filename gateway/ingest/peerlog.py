"""Log lines caused by DICOM peers: one concise line each, identical ones rate-limited.

pynetdicom logs a peer's malformed input with full tracebacks (``LOGGER.exception``),
and a hostile peer can repeat the same input thousands of times. :class:`PeerLogFilter`
sits on the log handlers: records from the listener's loggers lose their traceback
(the exception's type and message stay in the line), and a message already logged in
the last ``window_s`` seconds (the same apart from its numbers: lengths, PDU types)
is counted instead of written. The next time it is written, the line says how many
were held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

#: Numbers in a message (lengths, PDU types, counts) vary from one hostile input to the next.
_NUMBERS = re.compile(r"0x[0-9A-Fa-f]+|\d+")

#: The loggers whose records describe what a peer sent.
PEER_LOGGERS = ("pynetdicom", "gateway.ingest.listener", "gateway.ingest.receive")


class PeerLogFilter(logging.Filter):
    """Strip tracebacks from, and rate-limit identical, records of the peer loggers."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        loggers: tuple[str, ...] = PEER_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.loggers = loggers
        self._clock = clock
        self._lock = threading.Lock()
        # (logger, level, message) -> (when it was last written, how many held back since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.loggers):
            return True
        if record.exc_info or record.exc_text:
            exc = record.exc_info[1] if record.exc_info else None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            if exc is not None and str(exc) == record.getMessage():
                # pynetdicom's LOGGER.exception(exc): the message is the exception's text
                record.msg, record.args = f"{type(exc).__name__}: %s", (str(exc),)
        message = record.getMessage()
        key = (record.name, record.levelno, _NUMBERS.sub("#", message))
        now = self._clock()
        with self._lock:
            if len(self._seen) > 10_000:  # a peer varying its messages must not grow this
                self._seen.clear()
            last, held = self._seen.get(key, (-self.window_s, 0))
            if now - last < self.window_s:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg, record.args = (
                f"%s (repeated {held} times in the last {self.window_s:.0f} s)",
                (message,),
            )
        return True
