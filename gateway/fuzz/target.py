"""What the campaign watches on the gateway: processes, memory, connections, log, and data dir.

All of it is read from outside, as an operator would: ``/proc`` for the processes and the
server side of the DICOM port's connections, the log file ``up`` writes, and the data dir
(``index.sqlite`` opened read-only, ``spool/``, ``sealed/``, ``objects/``).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.index.db import DONE_STAGES, PARKED

#: Rows that need nothing more from the pipeline.
SETTLED = frozenset(DONE_STAGES)
#: TCP states in /proc/net/tcp where the gateway still holds the connection open.
HELD_STATES = {"01": "established", "08": "close_wait", "03": "syn_recv"}


def process_tree(pid: int) -> dict[int, int]:
    """``pid`` and its descendants, each with its start time (to tell a new pid from the old)."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        started = start_time(current)
        if started is None:
            continue
        found[current] = started
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/pid/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited
        return None
    return int(fields[19])


def dead(watched: dict[int, int]) -> list[int]:
    """The watched processes that exited (or whose pid now belongs to another process)."""
    return [pid for pid, started in watched.items() if start_time(pid) != started]


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB; empty if it is gone."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def held_connections(port: int) -> dict[str, int]:
    """Server-side connections of ``port`` the gateway still holds open, by TCP state."""
    counts: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port and parts[3] in HELD_STATES:
                counts[HELD_STATES[parts[3]]] += 1
    return dict(counts)


@dataclass
class LogWatch:
    """Counts in the gateway's log from the byte offset where the campaign started."""

    path: Path
    offset: int = 0

    def __post_init__(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._tail = self.offset

    def tail(self) -> tuple[int, int]:
        """Tracebacks and thread deaths logged since the last call (to blame an input)."""
        tracebacks = deaths = 0
        try:
            with self.path.open("rb") as log:
                log.seek(self._tail)
                data = log.read()
        except OSError:
            return 0, 0
        self._tail += len(data)
        tracebacks = data.count(b"Traceback (most recent call last)")
        deaths = data.count(b"Exception in thread")
        return tracebacks, deaths

    def counts(self) -> dict[str, Any]:
        lines = tracebacks = thread_deaths = errors = warnings = 0
        examples: list[str] = []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            for raw in log:
                line = raw.decode("utf-8", "replace")
                lines += 1
                if line.startswith("Traceback (most recent call last)"):
                    tracebacks += 1
                elif line.startswith("Exception in thread"):
                    thread_deaths += 1
                    if len(examples) < 5:
                        examples.append(line.strip()[:200])
                elif " ERROR " in line:
                    errors += 1
                elif " WARNING " in line:
                    warnings += 1
        return {
            "lines": lines,
            "tracebacks": tracebacks,
            "thread_deaths": thread_deaths,
            "thread_death_examples": examples,
            "error_lines": errors,
            "warning_lines": warnings,
        }


def index_rows(data_dir: Path) -> list[dict[str, Any]]:
    """The index's rows, read-only (the gateway keeps writing meanwhile)."""
    path = data_dir / "index.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [
            dict(row)
            for row in db.execute(
                "SELECT id, entry_id, sop_instance_uid, stage, parked_stage, last_error,"
                " object_name, transfer_syntax FROM instances ORDER BY id"
            )
        ]
    finally:
        db.close()


def incoming_files(data_dir: Path) -> list[Path]:
    """Files in ``spool/incoming``: receptions in progress, or orphans once the port is idle."""
    incoming = data_dir / "spool" / "incoming"
    return sorted(incoming.iterdir()) if incoming.is_dir() else []


@dataclass
class Ledger:
    """What the fuzzer saw happen to every SOP Instance UID it sent in a C-STORE."""

    sent: dict[str, int] = field(default_factory=dict)  # uid -> input index
    acked: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    operators: dict[int, list[str]] = field(default_factory=dict)  # input index -> what it was


def last_row_id(data_dir: Path) -> int:
    """The highest row id so far (0 for an empty index): rows above it are the campaign's."""
    return max((int(r["id"]) for r in index_rows(data_dir)), default=0)


def leftovers(data_dir: Path, ledger: Ledger, *, after_row: int = 0) -> dict[str, Any]:
    """Everything the gateway keeps that it should not, once idle and settled.

    Rows up to ``after_row`` were there before the campaign: they explain files, but
    only later rows are held against the fuzzer's ledger.

    - ``refused_but_recorded``: a row for a UID the gateway refused (and never acked)
    - ``unknown_rows``: a row for a UID the fuzzer never sent
    - ``acked_but_missing``: an acked UID without a row (a lost image)
    - ``acked_then_parked``: an acked row parked at ``failed`` by one of the gateway's own
      stages (fingerprint, seal, put, anchor): acked, yet the gateway cannot file it.
      Rows parked at ``forward`` (the PACS refused the instance) are reported apart as
      ``parked_by_pacs``, and are findings too: the check before the ack should have
      refused what Orthanc cannot file.
    - ``unsettled``: a row still waiting for a stage
    - ``incoming_files``: partial receptions left in ``spool/incoming``
    - ``orphan_spool_files``: files in ``spool/ready`` without a row, or whose row is done
    - ``orphan_objects``, ``orphan_sealed``: objects or sealed files no row explains
    """
    every_row = index_rows(data_dir)
    rows = [r for r in every_row if int(r["id"]) > after_row]
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_uid.setdefault(row["sop_instance_uid"], []).append(row)
    refused_rows = [r for r in rows if r["sop_instance_uid"] in ledger.refused - ledger.acked]
    unknown = [r for r in rows if r["sop_instance_uid"] not in ledger.sent]
    acked_rows = [r for r in rows if r["sop_instance_uid"] in ledger.acked]
    parked = [r for r in rows if r["stage"] == PARKED]
    at_fingerprint = [r for r in parked if r["parked_stage"] != "forward"]
    by_pacs = [r for r in parked if r["parked_stage"] == "forward"]
    unconfirmed = [
        r for r in rows
        if r["sop_instance_uid"] in ledger.sent
        and r["sop_instance_uid"] not in ledger.acked | ledger.refused
    ]  # fmt: skip
    unsettled = [r for r in rows if r["stage"] not in SETTLED]
    incoming = incoming_files(data_dir)
    ready_dir = data_dir / "spool" / "ready"
    keep_spool = {
        r["entry_id"] for r in every_row if r["stage"] not in ("committed", "duplicate", "conflict")
    }
    orphan_spool = [
        p.name for p in (sorted(ready_dir.iterdir()) if ready_dir.is_dir() else [])
        if p.stem not in keep_spool
    ]  # fmt: skip
    objects_dir = data_dir / "objects"
    names = {r["object_name"] for r in every_row if r["object_name"]}
    objects = [p for p in (objects_dir.rglob("*") if objects_dir.is_dir() else []) if p.is_file()]
    orphan_objects = [
        str(p.relative_to(objects_dir)) for p in objects
        if f"{p.parent.name}/{p.name}" not in names
    ]  # fmt: skip
    sealed_dir = data_dir / "sealed"
    at_put = {r["entry_id"] for r in every_row if r["stage"] == "put" or r["parked_stage"] == "put"}
    orphan_sealed = [
        p.name for p in (sorted(sealed_dir.iterdir()) if sealed_dir.is_dir() else [])
        if p.stem not in at_put
    ]  # fmt: skip

    def brief(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "input": ledger.sent.get(r["sop_instance_uid"]),
                "operators": ledger.operators.get(ledger.sent.get(r["sop_instance_uid"], -1)),
                "row": r["id"],
                "stage": r["stage"],
                "parked_stage": r["parked_stage"],
                "transfer_syntax": r["transfer_syntax"],
                "last_error": (r["last_error"] or "")[:160],
            }
            for r in found[:10]
        ]

    return {
        "rows": len(rows),
        "acked_rows": len(acked_rows),
        "refused_but_recorded": len(refused_rows),
        "refused_but_recorded_examples": brief(refused_rows),
        "unknown_rows": len(unknown),
        "unknown_row_examples": brief(unknown),
        "acked_but_missing": sorted(ledger.sent[u] for u in ledger.acked if u not in by_uid)[:20],
        "acked_then_parked": len(at_fingerprint),
        "acked_then_parked_examples": brief(at_fingerprint),
        "parked_by_stage": dict(Counter(str(r["parked_stage"]) for r in parked)),
        "parked_by_pacs": len(by_pacs),
        "parked_by_pacs_examples": brief(by_pacs),
        "unconfirmed_rows": len(unconfirmed),
        "unsettled": len(unsettled),
        "unsettled_examples": brief(unsettled),
        "incoming_files": len(incoming),
        "incoming_bytes": sum(p.stat().st_size for p in incoming if p.exists()),
        "orphan_spool_files": len(orphan_spool),
        "orphan_objects": len(orphan_objects),
        "orphan_sealed": len(orphan_sealed),
    }


def leftover_count(found: dict[str, Any]) -> int:
    """How many findings :func:`leftovers` reports."""
    keys = ("refused_but_recorded", "unknown_rows", "acked_then_parked", "parked_by_pacs", "unsettled",
            "incoming_files", "orphan_spool_files", "orphan_objects", "orphan_sealed")  # fmt: skip
    return sum(int(found[k]) for k in keys) + len(found["acked_but_missing"])
