"""The plugin's PostgreSQL evidence look-ups, kept while the index's notifications are heard.

On PostgreSQL each read's look-up is a round trip to the index (0.3-0.5 ms, a fifth of
Orthanc's own read). The index's triggers ``NOTIFY``
:data:`~gateway.index.evidence_view.CHANNEL` with the SOP Instance UID whenever what the
plugin's view shows of it changes (:mod:`gateway.index.evidence_view`), so a look-up's
answer stays true until such a notification. :class:`EvidenceCache` keeps answers, and
:class:`EvidenceListener` ``LISTEN`` s on a session of its own and drops the UIDs named.

The rules that keep a verdict true:

- an answer is kept only while the listener listens, and only if it listened before the
  look-up started and heard nothing at all during it (a generation counter, bumped by
  every notification and every change of the listener's state): a commit landing during
  the look-up is either seen by it or notified after it, and then the answer is not kept;
- when the listen session drops, everything is forgotten and every read looks up afresh,
  until it listens again;
- an answer is kept at most :data:`MAX_AGE_S` seconds and :data:`LIMIT` UIDs (least
  recently used first out);
- only the index's answer is kept: every read still hashes the file and is judged
  (:func:`~gateway.orthanc_plugin.verdict.judge`) at its own time.

The staleness this allows is the notification's delivery time, the same race a read
already has with a commit landing just after its look-up.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.index.evidence_view import CHANNEL, EVERYTHING, TRIGGERS
from gateway.orthanc_plugin.evidence import Records
from gateway.orthanc_plugin.verdict import Version
from gateway.redact import redact_text

#: The most SOP Instance UIDs kept (a 200-slice study is 200; ~2 KB each).
LIMIT = 20_000
#: The longest an answer is kept, whatever is heard: bounds what a silently lost session
#: (a network partition TCP has not noticed yet) could leave stale.
MAX_AGE_S = 60.0
#: How long the listener waits for a notification before it checks that its session lives.
HEARTBEAT_S = 5.0
#: How often the listener looks whether it is asked to stop (Orthanc stopping waits for it).
STOP_POLL_S = 0.5
#: How long it waits before listening again after its session dropped.
RECONNECT_S = 1.0
#: How long it waits before looking again for the index's notifying triggers.
NO_TRIGGERS_RETRY_S = 30.0


@dataclass(frozen=True)
class CacheCounts:
    """What the cache did since it started (``/xray/evidence-cache``; the bench)."""

    hits: int
    misses: int
    bypassed: int
    dropped: int
    flushes: int
    entries: int
    listening: bool


class EvidenceCache:
    """:class:`~gateway.orthanc_plugin.evidence.Records` answering from memory while the
    index's notifications are heard (see the module for the rules).

    ``book`` looks the versions up; the listener calls :meth:`listening_began`,
    :meth:`heard` and :meth:`listening_ended`. Thread-safe: Orthanc reads on many threads.
    """

    def __init__(
        self,
        book: Records,
        *,
        limit: int = LIMIT,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book
        self.limit = limit
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, tuple[Version, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self._listening = False
        self._generation = 0
        self._hits = self._misses = self._bypassed = self._dropped = self._flushes = 0

    def versions(self, sop_instance_uid: str) -> tuple[Version, ...]:
        """Every recorded version of ``sop_instance_uid``, oldest first, as the index has
        them (from memory only under the module's rules).

        Raises :class:`~gateway.errors.IndexUnavailable` when the records cannot be read.
        """
        with self._lock:
            hit = self._hit(sop_instance_uid)
            if hit is not None:
                return hit
            generation = self._generation if self._listening else None
            if generation is None:
                self._bypassed += 1
            else:
                self._misses += 1
        versions = self.book.versions(sop_instance_uid)
        if generation is not None:
            with self._lock:
                if self._listening and self._generation == generation:
                    self._keep(sop_instance_uid, versions)
        return versions

    def cached(self, sop_instance_uid: str) -> bool:
        """Whether a look-up of ``sop_instance_uid`` would now be answered from memory."""
        with self._lock:
            entry = self._entries.get(sop_instance_uid)
            return self._listening and entry is not None and self._fresh(entry[0])

    def _hit(self, sop_instance_uid: str) -> tuple[Version, ...] | None:
        """The kept answer, if it may be used (under the lock)."""
        if not self._listening:
            return None
        entry = self._entries.get(sop_instance_uid)
        if entry is None:
            return None
        if not self._fresh(entry[0]):
            del self._entries[sop_instance_uid]
            return None
        self._entries.move_to_end(sop_instance_uid)
        self._hits += 1
        return entry[1]

    def _fresh(self, kept_at: float) -> bool:
        return self._clock() - kept_at < self.max_age_s

    def _keep(self, sop_instance_uid: str, versions: tuple[Version, ...]) -> None:
        """Keep an answer, the least recently used out past :attr:`limit` (under the lock)."""
        self._entries[sop_instance_uid] = (self._clock(), versions)
        self._entries.move_to_end(sop_instance_uid)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    # -- the listener's side ----------------------------------------------------------------

    def listening_began(self) -> None:
        """The listener's ``LISTEN`` is in force: answers may be kept from now on."""
        with self._lock:
            self._entries.clear()
            self._generation += 1
            self._listening = True

    def heard(self, payload: str) -> None:
        """A notification: forget the UID it names (everything for :data:`EVERYTHING`)."""
        with self._lock:
            self._generation += 1
            if payload == EVERYTHING:
                self._entries.clear()
                self._flushes += 1
            elif self._entries.pop(payload, None) is not None:
                self._dropped += 1

    def listening_ended(self) -> None:
        """The listen session dropped: forget everything and keep nothing until it is back."""
        with self._lock:
            self._listening = False
            self._generation += 1
            self._entries.clear()
            self._flushes += 1

    @property
    def listening(self) -> bool:
        """Whether answers are kept now."""
        return self._listening

    def counts(self) -> CacheCounts:
        """Hits, misses (looked up while listening), bypassed (looked up while not), UIDs
        dropped by a notification, flushes, entries kept, and whether it listens."""
        with self._lock:
            return CacheCounts(
                hits=self._hits, misses=self._misses, bypassed=self._bypassed,
                dropped=self._dropped, flushes=self._flushes, entries=len(self._entries),
                listening=self._listening,
            )  # fmt: skip


class EvidenceListener:
    """``LISTEN`` on :data:`~gateway.index.evidence_view.CHANNEL` on a session of its own,
    telling ``cache`` what it hears, on a daemon thread.

    ``url`` is the plugin's read-only role (``LISTEN`` needs no privilege). After
    :data:`HEARTBEAT_S` without a notification it checks that the session lives (one
    round trip; TCP keepalives and a user timeout bound a silent network); when the session
    drops it tells the cache, and listens again after :data:`RECONNECT_S`.
    """

    def __init__(
        self,
        url: str,
        cache: EvidenceCache,
        *,
        log: Callable[[str], None] = lambda message: None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.url = url
        self.cache = cache
        self.log = log
        self.heartbeat_s = heartbeat_s
        self.backend_pid: int | None = None  # the session's server process (tests cut it)
        self._told_missing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xray-evidence-listen", daemon=True)

    def start(self) -> EvidenceListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            wait = RECONNECT_S
            try:
                with self._connect() as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    if self._notifiers_missing(db):
                        wait = NO_TRIGGERS_RETRY_S
                    else:
                        self.backend_pid = db.info.backend_pid
                        self.cache.listening_began()
                        self._listen(db)
            except psycopg.Error as exc:
                if self.cache.listening:
                    self.log(f"xray-gateway: evidence cache off, not listening: {_why(exc)}")
            finally:
                self.cache.listening_ended()
                self.backend_pid = None
            self._stop.wait(wait)

    def _notifiers_missing(self, db: Any) -> bool:
        """Whether the index lacks its notifying triggers (a gateway older than this
        plugin has not migrated it yet): then nothing would be heard, and nothing is kept."""
        names = [name for name, _, _, _ in TRIGGERS]
        row = db.execute(
            "SELECT count(DISTINCT tgname) FROM pg_trigger WHERE tgname = ANY(%s)"
            " AND tgrelid = 'instances'::regclass",
            (names,),
        ).fetchone()
        if row is not None and row[0] == len(names):
            return False
        if not self._told_missing:
            self._told_missing = True
            self.log(
                "xray-gateway: evidence cache off: the gateway's index has no notifying "
                "triggers yet (start a gateway of this version once); every read looks up"
            )
        return True

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.url, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=5,
            keepalives_interval=2, keepalives_count=2, tcp_user_timeout=10_000,
            application_name="xray-evidence-listen",
        )  # fmt: skip

    def _listen(self, db: Any) -> None:
        checked = time.monotonic()
        while not self._stop.is_set():
            for note in db.notifies(timeout=STOP_POLL_S):
                self.cache.heard(note.payload)
                checked = time.monotonic()  # the session lives
                if self._stop.is_set():
                    return
            if time.monotonic() - checked >= self.heartbeat_s:
                db.execute("SELECT 1")  # a dead session raises here
                checked = time.monotonic()

    def close(self) -> None:
        """Stop listening (Orthanc stopping; tests); the cache then keeps nothing."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(STOP_POLL_S + 5)


def _why(exc: Exception) -> str:
    """The first line of a driver error, redacted (the server's detail lines dropped)."""
    text = str(exc).strip()
    return redact_text(text.splitlines()[0]) if text else type(exc).__name__
