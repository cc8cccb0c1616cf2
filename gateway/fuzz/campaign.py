"""The campaign: a seeded stream of inputs against a running gateway, its checks and its report.

Each input ``i`` draws from ``random.Random(f"{seed}:{i}")``: its kind (random bytes, a
mutated association, a valid association then mutated P-DATA, a C-STORE of a mutated
dataset), then its bytes. Every ``echo_every`` inputs, and at the end, DCMTK's echoscu
must get an answer, the gateway's processes must be alive and their memory is sampled.
After the last input the campaign waits for the port to go idle and the index to settle,
then looks for leftovers (see :func:`gateway.fuzz.target.leftovers`).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.fuzz import pdus
from gateway.fuzz.datasets import Source, corpus, instance_uid, store_input
from gateway.fuzz.target import (
    SETTLED,
    Ledger,
    LogWatch,
    dead,
    held_connections,
    incoming_files,
    index_rows,
    last_row_id,
    leftover_count,
    leftovers,
    memory_mb,
    process_tree,
)
from gateway.fuzz.wire import Outcome, StoreClient, run_raw

ECHOSCU = "/usr/bin/echoscu"  # by path: the venv's pynetdicom apps shadow DCMTK's
#: After the last row settles: time for the stage that settled it to remove its files.
SETTLE_GRACE_S = 2.0
#: Input kinds and their shares of the stream.
KINDS = (("random_bytes", 0.1), ("association", 0.3), ("p_data", 0.3), ("c_store", 0.3))


@dataclass(frozen=True)
class Target:
    """The running gateway: where to send, what to watch."""

    host: str
    port: int
    ae_title: str
    pid: int
    data_dir: Path
    log: Path


@dataclass(frozen=True)
class Plan:
    """What to run: ``inputs`` inputs of ``seed`` (or only the indexes in ``only``)."""

    seed: int
    inputs: int
    echo_every: int = 100
    hang_s: float = 30.0
    answer_s: float = 1.0
    settle_s: float = 300.0
    only: tuple[int, ...] = ()
    control: bool = False  # nothing mutated: a check of the harness, which must find nothing

    def indexes(self) -> list[int]:
        """The input indexes to run, in order."""
        return list(self.only) or list(range(self.inputs))


@dataclass
class Tally:
    """Counts while the campaign runs."""

    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    operators: Counter[str] = field(default_factory=Counter)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    echo: Counter[str] = field(default_factory=Counter)
    echo_failures: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    slowest: dict[str, Any] = field(default_factory=lambda: {"seconds": 0.0})
    examples: dict[str, list[int]] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    blamed: list[dict[str, Any]] = field(default_factory=list)  # inputs followed by tracebacks
    left_incoming: list[dict[str, Any]] = field(default_factory=list)  # and by incoming files
    incoming_seen: int = 0

    def note(self, index: int, kind: str, outcome: Outcome, seconds: float, ops: list[str]) -> None:
        self.kinds[kind] += 1
        self.operators.update(ops)
        for event in dict.fromkeys(outcome.events):
            self.statuses[f"{kind}:{event}"] += 1
            seen = self.examples.setdefault(f"{kind}:{event}", [])
            if len(seen) < 5:
                seen.append(index)
        self.ledger.acked |= outcome.acked
        self.ledger.refused |= outcome.refused
        if outcome.hang:
            self.hangs.append({"input": index, "kind": kind, "operators": ops})
        if seconds > self.slowest["seconds"]:
            self.slowest = {"input": index, "kind": kind, "seconds": round(seconds, 3),
                            "operators": ops}  # fmt: skip


class Inputs:
    """The seeded input stream: ``make(i)`` is the same input on every run."""

    def __init__(
        self, *, seed: int, called: str, sources: list[Source], control: bool = False
    ) -> None:
        self.seed, self.called, self.sources = seed, called, sources
        self.control = control

    def kind_of(self, rng: random.Random) -> str:
        roll, total = rng.random(), 0.0
        for kind, share in KINDS:
            total += share
            if roll < total:
                return kind
        return KINDS[-1][0]

    def make(self, index: int) -> tuple[str, Any]:
        rng = random.Random(f"{self.seed}:{index}")
        kind = self.kind_of(rng)
        if self.control:
            return self._valid(kind, rng, index)
        if kind == "random_bytes":
            return kind, pdus.random_bytes_input(rng)
        if kind == "association":
            return kind, pdus.association_input(rng, called=self.called)
        if kind == "p_data":
            uid = instance_uid(self.seed, index)
            return kind, pdus.p_data_input(rng, called=self.called, sop_instance=uid)
        item = store_input(self.sources, rng, seed=self.seed, index=index)
        if item is None:  # this source cannot be written in the drawn syntax: random bytes
            return "random_bytes", pdus.random_bytes_input(rng)
        return kind, item

    def _valid(self, kind: str, rng: random.Random, index: int) -> tuple[str, Any]:
        """The control stream: the same kinds, nothing mutated; it must find nothing."""
        if kind == "c_store":
            item = store_input(self.sources, rng, seed=self.seed, index=index, mutated=False)
            if item is not None:
                return kind, item
        if kind == "association":
            return kind, pdus.valid_association_input(called=self.called)
        uid = instance_uid(self.seed, index)
        valid = pdus.p_data_input(rng, called=self.called, sop_instance=uid, mutated=False)
        return "p_data", valid


def echo(target: Target) -> tuple[bool, str]:
    """DCMTK's echoscu against the gateway: (answered with success, what it said)."""
    argv = [ECHOSCU, "-aet", "FUZZECHO", "-aec", target.ae_title, "-to", "30", "-ta", "30",
            "-td", "30", target.host, str(target.port)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return False, "no answer in 120 s"
    said = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, (said[-1] if said else "")[:200]


def run_campaign(
    target: Target,
    plan: Plan,
    *,
    workdir: Path,
    progress: Callable[[int, int, Tally], None] | None = None,
) -> dict[str, Any]:
    """Run the plan against ``target``; returns the report (see ``report`` keys)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sources = corpus(workdir / "fixtures")
    inputs = Inputs(seed=plan.seed, called=target.ae_title, sources=sources, control=plan.control)
    client = StoreClient(host=target.host, port=target.port, called=target.ae_title,
                         workdir=workdir, hang_s=plan.hang_s)  # fmt: skip
    watched = process_tree(target.pid)
    log = LogWatch(target.log)
    memory_before = memory_mb(target.pid)
    first_row = last_row_id(target.data_dir)
    tally = Tally()
    started = time.monotonic()
    with warnings.catch_warnings():
        # pydicom and pynetdicom warn about odd data in the fuzzer's own process: expected.
        warnings.simplefilter("ignore")
        _run_inputs(target, plan, inputs=inputs, client=client, tally=tally, log=log,
                    watched=watched, progress=progress)  # fmt: skip
    seconds = time.monotonic() - started
    crashed = dead(watched)
    idle = _wait_idle(target, crashed, deadline=plan.hang_s * 2)
    settled = _wait_settled(target, crashed, deadline=plan.settle_s)
    found = leftovers(target.data_dir, tally.ledger, after_row=first_row)
    return {
        "seed": plan.seed,
        "inputs": sum(tally.kinds.values()),
        "inputs_planned": len(plan.indexes()),
        "seconds": round(seconds, 1),
        "inputs_per_s": round(sum(tally.kinds.values()) / seconds, 2) if seconds else None,
        "kinds": dict(tally.kinds),
        "statuses": dict(sorted(tally.statuses.items())),
        "status_examples": tally.examples,
        "operators": dict(tally.operators.most_common()),
        "crashes": len(crashed),
        "crashed_pids": crashed,
        "hangs": len(tally.hangs) + tally.echo["no_answer"],
        "hang_examples": tally.hangs[:20],
        "echo_checks": {
            "passed": tally.echo["passed"],
            "failed": tally.echo["failed"] + tally.echo["no_answer"],
            "no_answer": tally.echo["no_answer"],
            "failures": tally.echo_failures[:20],
        },
        "acked": len(tally.ledger.acked),
        "refused": len(tally.ledger.refused - tally.ledger.acked),
        "idle_after_s": idle,
        "settled": settled,
        "leftovers": found,
        "leftover_count": leftover_count(found),
        "slowest_input": tally.slowest,
        "rss_mb": {"before": memory_before, "after": memory_mb(target.pid)},
        "log": log.counts(),
        "inputs_followed_by_tracebacks": len(tally.blamed),
        "traceback_examples": tally.blamed[:20],
        "inputs_followed_by_incoming_files": tally.left_incoming[:20],
        "checkpoints": tally.checkpoints,
        "corpus": {"sources": len({s.name for s in sources}), "pairs": len(sources)},
    }


def _run_inputs(
    target: Target,
    plan: Plan,
    *,
    inputs: Inputs,
    client: StoreClient,
    tally: Tally,
    log: LogWatch,
    watched: dict[int, int],
    progress: Callable[[int, int, Tally], None] | None,
) -> None:
    """Send every planned input, with a checkpoint every ``echo_every``; stop if one died."""
    indexes = plan.indexes()
    for done, index in enumerate(indexes, 1):
        kind, item = inputs.make(index)
        t0 = time.monotonic()
        if kind == "c_store":
            tally.ledger.sent[item.request_uid] = index
            tally.ledger.operators[index] = [item.source, item.transfer_syntax, *item.operators]
            outcome = client.send(item)
            ops = [item.source, item.transfer_syntax, *item.operators]
        else:
            for uid in item.uids:
                tally.ledger.sent[uid] = index
                tally.ledger.operators[index] = list(item.operators)
            outcome = run_raw(target.host, target.port, item, answer_s=plan.answer_s,
                              hang_s=plan.hang_s)  # fmt: skip
            ops = list(item.operators)
        tally.note(index, kind, outcome, time.monotonic() - t0, ops)
        incoming = len(incoming_files(target.data_dir))
        if incoming > tally.incoming_seen:  # a file stayed behind once its connection ended
            tally.left_incoming.append({"input": index, "kind": kind, "operators": ops,
                                        "files": incoming - tally.incoming_seen})  # fmt: skip
        tally.incoming_seen = incoming
        tracebacks, deaths = log.tail()
        if tracebacks or deaths:
            tally.blamed.append({"input": index, "kind": kind, "operators": ops,
                                 "tracebacks": tracebacks, "thread_deaths": deaths})  # fmt: skip
        if done % plan.echo_every == 0 or done == len(indexes):
            _checkpoint(target, tally, done)
        if progress is not None:
            progress(done, len(indexes), tally)
        if done % plan.echo_every == 0 and dead(watched):
            return


def _checkpoint(target: Target, tally: Tally, done: int) -> None:
    """C-ECHO from DCMTK, then memory, held connections and spool/incoming, noted."""
    ok, said = echo(target)
    if ok:
        tally.echo["passed"] += 1
    else:
        lowered = said.lower()
        key = (
            "no_answer" if any(w in lowered for w in ("120 s", "timeout", "time out")) else "failed"
        )
        tally.echo[key] += 1
        tally.echo_failures.append({"after_input": done, "said": said})
    tally.checkpoints.append({
        "inputs": done,
        "echo": ok,
        "rss_mb": memory_mb(target.pid).get("VmRSS"),
        "held_connections": held_connections(target.port),
        "incoming_files": len(incoming_files(target.data_dir)),
    })  # fmt: skip


def _wait_idle(target: Target, crashed: list[int], *, deadline: float) -> float | None:
    """Seconds until the gateway holds no connection of the port open (None: it still does)."""
    start = time.monotonic()
    while not crashed and time.monotonic() - start < deadline:
        if not held_connections(target.port):
            return round(time.monotonic() - start, 1)
        time.sleep(0.5)
    return None


def _wait_settled(target: Target, crashed: list[int], *, deadline: float) -> bool:
    """Wait until every row is at a final stage (or parked); False if some never got there."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if all(row["stage"] in SETTLED for row in index_rows(target.data_dir)):
            # A stage removes its spool or sealed file just after it advances the row.
            time.sleep(SETTLE_GRACE_S)
            return True
        if crashed:
            return False
        time.sleep(1.0)
    return False
