"""``xray-gateway``: the command line. Each subcommand is a thin shell over a module."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from gateway import __version__
from gateway.config import Settings, get_settings
from gateway.errors import ChainRequestPending, ConfigError, GatewayError
from gateway.ingest import peerlog
from gateway.ledger.types import UserType

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.core.checkpoint import NoteVerifier
    from gateway.core.receipt import Check
    from gateway.procs import DirLock
    from gateway.stack import ListenerNode, WorkerNode

ROLES = {t.name.lower(): t for t in UserType if t is not UserType.NONE}


def _share_metrics_over_processes(settings: Settings) -> None:
    """``up``'s ``/metrics`` adds up what every process of it counted (its listener and
    worker processes, itself): prometheus_client's multiprocess mode, in an emptied
    ``<data dir>/run/metrics``. Set before prometheus_client is first imported (nothing
    this module imports at the top imports it; tests/unit/test_metrics.py holds it so),
    and inherited by the children."""
    # in the run dir (gateway.stack.run_dir), which this module may not import yet
    directory = settings.data_dir / "run" / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _up_lock(settings: Settings) -> DirLock:
    """The data dir's ``up`` lock: held by ``up`` for its life, and by what must not run
    beside it (``keys rotate --retire-old``)."""
    from gateway.procs import DirLock

    return DirLock(settings.data_dir / "run" / "up.lock")


def _cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    # before anything of the data dir is touched: a second `up` must not empty the first
    # one's metrics directory on its way to being refused
    _up_lock(settings).acquire()  # held until this process ends
    _share_metrics_over_processes(settings)
    from gateway.stack import Stack

    if args.external and settings.embedded_chain:
        raise ConfigError("--external needs GATEWAY_CHAIN_URL: it starts nothing embedded")
    stack = Stack(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops it even when started with SIGINT ignored (a shell's background job, nohup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        while not stop.wait(0.5):
            stack.supervise()  # a dead worker process starts again under its id
    except KeyboardInterrupt:
        pass
    finally:
        print("xray-gateway: stopping…", file=sys.stderr, flush=True)
        stack.stop()
    return 0


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.stack import WorkerNode

    return _run_child(
        WorkerNode(settings, worker=args.id, anchors=not args.no_anchor), f"worker {args.id}"
    )


def _cmd_listener(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.stack import ListenerNode

    return _run_child(ListenerNode(settings, listener=args.id), f"listener {args.id}")


def _run_child(node: WorkerNode | ListenerNode, name: str) -> int:
    """Run one of ``up``'s child processes until SIGTERM (``up`` stops it) or Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        node.start()
        print(f"xray-gateway {name} is up", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    return 0


def _cmd_contract_deploy(settings: Settings, args: argparse.Namespace) -> int:
    """Deploy once, pin the address in the data dir, and grant the recorder its role."""
    from gateway.ledger.bootstrap import admin_account, deploy_contract, recorder_account

    deployment = deploy_contract(settings, admin=args.admin)
    granted = args.admin is None or args.admin.lower() == admin_account(settings).address.lower()
    _print_json(
        {
            **deployment.__dict__,
            "recorder": recorder_account(settings).address if granted else None,
            "recorder_granted": granted,
        }
    )
    return 0


def _cmd_contract_grant(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ledger.bootstrap import admin_account, open_ledger

    ledger = open_ledger(settings, admin_account(settings))
    anchor = ledger.set_permission(args.account, args.name, ROLES[args.role], enabled=True)
    _print_json(
        {"account": args.account, "role": args.role, "name": args.name, "tx": anchor.tx_hash}
    )
    return 0


def _cmd_contract_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ledger.bootstrap import admin_account, open_ledger

    ledger = open_ledger(settings, admin_account(settings))
    if args.role:
        anchor = ledger.set_permission(args.account, "", ROLES[args.role], enabled=False)
    else:
        anchor = ledger.remove_permission(args.account)
    _print_json({"account": args.account, "revoked": args.role or "all", "tx": anchor.tx_hash})
    return 0


def _cmd_contract_info(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ledger.bootstrap import open_ledger

    ledger = open_ledger(settings)
    info = ledger.info()
    for account in args.account or []:
        info.setdefault("accounts", {})[account] = {
            "name": ledger.name_of(account),
            "roles": ledger.roles_of(account),
        }
    _print_json(info)
    return 0


def _cmd_keys_init(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.core.keys import init_keys

    status = init_keys(settings.keys_dir)
    _print_json(status.__dict__ if hasattr(status, "__dict__") else str(status))
    return 0


def _cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    """A new current KEK, then every study key and every v1 sealed object re-wrapped to it
    (v2 objects are under their study key and stay as they are)."""
    if args.retire_old:
        return _keys_retire_old(settings)
    from gateway.core.keys import load_keyring, rotate_kek
    from gateway.index.db import Index
    from gateway.index.erasure import StudyKeys
    from gateway.stack import open_object_store
    from gateway.store.rewrap import rewrap_store

    kek = rotate_kek(settings.keys_dir)
    keyring = load_keyring(settings.keys_dir)
    index = Index(settings.index_location)
    try:
        study_keys = StudyKeys(index, keyring).rewrap(kek)
    finally:
        index.close()
    rewrapped = rewrap_store(open_object_store(settings), keyring=keyring, new_kek=kek)
    _print_json(
        {"current_kek": kek.kek_id, "known_keks": list(keyring.ids), "rewrapped": rewrapped,
         "study_keys_rewrapped": study_keys}
    )  # fmt: skip
    return 0


def _keys_retire_old(settings: Settings) -> int:
    """``keys rotate --retire-old``: after the rotation, v1 objects sealed again under their
    study keys, then every old KEK destroyed (no kept copy of a v1 object opens any more)."""
    from gateway.core.keys import load_pseudonym_key
    from gateway.index.db import Index
    from gateway.stack import open_object_store
    from gateway.trust.erasure import retire_old_keks

    # a running `up` keeps the KEK it loaded and would wrap new study keys under it: refuse
    # while this data dir's `up` runs, and keep one from starting until the KEKs are gone
    lock = _up_lock(settings)
    try:
        lock.acquire()
    except ConfigError as running:
        raise ConfigError(
            f"{running}: stop it (and every other node) before --retire-old"
        ) from None
    index = Index(settings.index_location)
    try:
        done = retire_old_keks(
            index, open_object_store(settings), keys_dir=settings.keys_dir,
            pseudonym_key=load_pseudonym_key(settings.keys_dir),
        )  # fmt: skip
    finally:
        index.close()
        lock.release()
    _print_json({**vars(done), "destroyed": list(done.destroyed)})
    print(
        "old KEKs destroyed here; delete the same files from every other node's keys/kek",
        file=sys.stderr,
    )
    return 0


def _cmd_keys_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    """Seal v1 objects again under their study's key (format v2), so they can be erased."""
    from gateway.core.keys import load_keyring, load_pseudonym_key
    from gateway.index.db import Index
    from gateway.index.erasure import StudyKeys
    from gateway.stack import open_object_store
    from gateway.trust.erasure import upgrade_to_v2

    index = Index(settings.index_location)
    try:
        moved = upgrade_to_v2(
            index, open_object_store(settings),
            study_keys=StudyKeys(index, load_keyring(settings.keys_dir)),
            pseudonym_key=load_pseudonym_key(settings.keys_dir),
        )  # fmt: skip
    finally:
        index.close()
    _print_json({"moved_to_v2": moved})
    return 0


def _local_verifier(settings: Settings) -> Any:
    """A verifier over this gateway's own parts (index, store, Orthanc, ledger), read-only."""
    from gateway.index.db import Index
    from gateway.ledger.bootstrap import open_ledger
    from gateway.stack import build_verifier, open_object_store, open_pacs

    return build_verifier(
        settings,
        ledger=open_ledger(settings),
        pacs=open_pacs(settings),
        store=open_object_store(settings),
        index=Index(settings.index_location),
    )


def _verdict_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("instance", "status", "detail"):
        table.add_column(column)
    styles = {"intact": "green", "pending": "yellow", "retired": "yellow", "unconfirmed": "yellow"}
    for name, verdict in rows:
        detail = verdict.tamper or ""
        if verdict.changes:
            detail += " (" + ", ".join(c.keyword or c.tag for c in verdict.changes[:5]) + ")"
        if verdict.notes:
            detail = "; ".join(filter(None, [detail, *verdict.notes]))
        style = styles.get(verdict.status, "bold red")
        table.add_row(name, f"[{style}]{verdict.status}[/]", detail)
    return table


def _cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Verify files against the ledger alone: chain URL, contract address, pseudonym key."""
    if args.receipt:
        return _cmd_verify_receipt(args)
    from dataclasses import asdict
    from pathlib import Path

    from rich.console import Console

    from gateway.core.keys import load_key_file, load_pseudonym_key
    from gateway.errors import UnknownInstance
    from gateway.ledger import XrayLedger
    from gateway.ledger.bootstrap import contract_address, open_ledger
    from gateway.trust.claims import api_claims
    from gateway.trust.verify import Verifier

    key = (
        load_key_file(Path(args.pseudonym_key))
        if args.pseudonym_key
        else load_pseudonym_key(settings.keys_dir)
    )
    ledger = (
        XrayLedger.at(
            args.chain_url or settings.effective_chain_url,
            args.contract or contract_address(settings),
            log_range=settings.chain_log_range,
        )
        if args.chain_url or args.contract
        else open_ledger(settings)  # the pinned contract, read from its deployment block
    )
    claims = None
    if args.proofs:  # batch proofs from a gateway's API, each checked against the chain
        token = Path(args.token_file).read_text().strip() if args.token_file else ""
        claims = api_claims(args.proofs, token=token)
    verifier = Verifier(
        ledger=ledger,
        pseudonym_key=key,
        claims=claims,
        max_instance_bytes=settings.max_instance_bytes,
        trusted_recorders=_trusted_recorders(args.trusted_recorders)
        if args.trusted_recorders
        else settings.trusted_recorders,
    )
    results: list[tuple[str, Any]] = []
    failed = 0
    for name in args.files:
        try:
            verdict = verifier.file(Path(name))
        except UnknownInstance:
            print(f"{name}: unregistered (no record on the ledger)", file=sys.stderr)
            failed += 1
            continue
        results.append((name, verdict))
        failed += verdict.status != "intact"
    if args.json:
        _print_json([{"file": name, **asdict(v)} for name, v in results])
    else:
        Console().print(_verdict_table("xray-gateway verify", results))
    return 0 if failed == 0 else 3


def _trusted_recorders(text: str) -> frozenset[str] | None:
    from gateway.core.ownership import parse_accounts

    try:
        return parse_accounts(text)
    except ValueError as exc:
        raise ConfigError(f"--trusted-recorders: {exc}") from None


def _cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """Sweep the archive with a progress bar, then print a summary and the findings."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from gateway.trust.alerts import Alerts
    from gateway.trust.audit import sweep

    verifier = _local_verifier(settings)
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("auditing", total=None)
        report = sweep(
            verifier,
            index=verifier.index,
            alerts=Alerts(settings.data_dir / "alerts.sqlite"),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if args.json:
        _print_json(asdict(report))
    else:
        summary = Table(title="audit summary")
        summary.add_column("status")
        summary.add_column("instances", justify="right")
        for status, count in report.summary.items():
            summary.add_row(status, str(count))
        summary.add_row(
            "ledger records without instance", str(report.ledger_records_without_instance)
        )
        out = Console()
        out.print(summary)
        if report.findings:
            findings = Table(title="findings")
            for column in ("status", "instance", "orthanc id", "detail"):
                findings.add_column(column)
            for f in report.findings:
                detail = "; ".join(filter(None, [f.tamper or "", *f.notes]))
                findings.add_row(
                    f.status,
                    f.sop_instance_uid or f"record {f.record_key}",
                    f.orthanc_id or "",
                    detail,
                )
            out.print(findings)
    return 0 if not report.findings else 3


def _cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from gateway.trust.restore import restore

    verdict = restore(_local_verifier(settings), args.uid)
    _print_json(
        {"sop_instance_uid": args.uid, "status": verdict.status, "verdict": asdict(verdict)}
    )
    return 0 if verdict.status == "intact" else 3


def _cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    """Two steps: without ``--confirm`` a dry run lists what would go and prints its hash;
    with ``--confirm HASH`` (and the same reason) it is erased."""
    import getpass

    from gateway.index.db import Index
    from gateway.ledger.bootstrap import open_ledger, recorder_account
    from gateway.stack import build_eraser

    who = f"cli:{getpass.getuser()}"
    if args.reason is None and not args.status:
        print("xray-gateway erase: --reason is required", file=sys.stderr)
        return 2
    index = Index(settings.index_location)
    try:
        reader = open_ledger(settings, recorder_account(settings))  # reads: the queue sends
        with _chain_queue(settings, index, reader=reader) as chained:
            eraser = build_eraser(settings, ledger=chained, index=index)
            if args.status:
                _print_json(eraser.status(args.status))
                return 0
            if args.confirm:
                done = eraser.confirm(args.confirm, reason=args.reason, confirmed_by=who)
                _print_json({"erased": True, **done.public()})
                return 0
            patient = (args.issuer, args.patient) if args.patient is not None else None
            plan = eraser.plan(reason=args.reason, asked_by=who, study=args.study, patient=patient)
        _print_json({"dry_run": True, **plan.public()})
        print(
            f"nothing erased yet: confirm with `xray-gateway erase --confirm {plan.plan_hash} "
            f"--reason {args.reason}`",
            file=sys.stderr,
        )
        return 0
    finally:
        index.close()


def _cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    """The studies the retention job listed as past their modality's retention period."""
    from gateway.index.db import Index
    from gateway.index.erasure import retention_due
    from gateway.trust.retention import list_due

    index = Index(settings.index_location)
    try:
        if args.now:
            list_due(index, settings.retention)
        _print_json([vars(item) for item in retention_due(index)])
    finally:
        index.close()
    return 0


def _tokens(settings: Settings) -> Any:
    from gateway.api.auth import Tokens

    return Tokens(
        admin_token_file=settings.data_dir / "api-token",
        issued_file=settings.keys_dir / "api-tokens.json",
    )


def _cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    token = _tokens(settings).issue(name=args.name, role=args.role)
    print(token)
    print(f"(shown once: {args.name} has the {args.role} role)", file=sys.stderr)
    return 0


def _cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    _print_json([{"name": name, "role": role} for name, role in _tokens(settings).list()])
    return 0


def _cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    if not _tokens(settings).revoke(args.name):
        raise ConfigError(f"no token named {args.name!r}")
    return 0


@contextlib.contextmanager
def _chain_queue(settings: Settings, index: Any, *, reader: Any = None) -> Iterator[Any]:
    """The chain-request queue of this node: the CLI's chain writes are sent by the node's
    anchoring worker (``up`` or ``xray-gateway worker``), rung through the workers' bell."""
    from gateway.stack import chain_queue, worker_doorbell

    doorbell = worker_doorbell(settings)
    try:
        yield chain_queue(settings, index, ring=doorbell.ring, reader=reader)
    finally:
        doorbell.close()


@contextlib.contextmanager
def _grants(settings: Settings, *, write: bool) -> Iterator[Any]:
    """The grants over the local index; ``write``: through the chain-request queue."""
    from gateway.core.keys import load_pseudonym_key
    from gateway.index.db import Index
    from gateway.trust.grants import Grants

    index = Index(settings.index_location, readonly=not write)
    try:
        with contextlib.ExitStack() as stack:
            queue = stack.enter_context(_chain_queue(settings, index)) if write else None
            yield Grants(
                index=index, ledger=None, queue=queue,
                pseudonym_key=load_pseudonym_key(settings.keys_dir),
            )  # fmt: skip
    finally:
        index.close()


def _grant_json(grant: Any) -> dict[str, Any]:
    from gateway.api.grants import GrantOut

    return GrantOut.of(grant, now=time.time()).model_dump(mode="json")


def _until(text: str | None) -> float | None:
    """``--until`` as epoch seconds (it needs a time zone)."""
    from datetime import datetime

    if text is None:
        return None
    until = datetime.fromisoformat(text)
    if until.tzinfo is None:
        raise ConfigError("--until needs a time zone, e.g. 2026-12-31T18:00:00Z")
    return until.timestamp()


def _cmd_grant_extend(settings: Settings, args: argparse.Namespace) -> int:
    if args.patient is not None or args.to is not None:
        raise ConfigError("--extend carries a grant on: give --until and/or --study only")
    with _grants(settings, write=True) as grants:
        try:
            grant = grants.replace(
                args.extend, by="cli", until=_until(args.until), study_instance_uid=args.study
            )
        except ValueError as invalid:
            raise ConfigError(str(invalid)) from None
    _print_json(_grant_json(grant))
    return 0


def _cmd_grant(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.core.access import is_account

    if args.extend is not None:
        return _cmd_grant_extend(settings, args)
    if args.to is None or args.until is None or (args.study is None) == (args.patient is None):
        raise ConfigError("a grant needs --to, --until and one of --study and --patient")
    until = _until(args.until)
    assert until is not None
    tokens, issued = _tokens(settings), None
    if not is_account(args.to) and tokens.id_of(args.to) is None:
        issued = tokens.issue(name=args.to, role="grantee")  # the grant binds to its id
    try:
        with _grants(settings, write=True) as grants:
            grant = grants.grant(
                to=args.to, until=until, by="cli", study_instance_uid=args.study,
                patient_id=args.patient, issuer=args.issuer, token_id=tokens.id_of(args.to),
            )  # fmt: skip
    except BaseException as failed:
        if issued is not None and not isinstance(failed, ChainRequestPending):
            tokens.revoke(args.to)  # no grant: the token issued for it goes too
        if isinstance(failed, ValueError):
            raise ConfigError(str(failed)) from None
        raise
    answer = _grant_json(grant)
    if issued is not None:
        answer["token"] = issued
        print(f"(the token is shown once: {args.to} has the grantee role)", file=sys.stderr)
    _print_json(answer)
    return 0


def _cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with _grants(settings, write=True) as grants:
        _print_json(_grant_json(grants.revoke(args.grant_id, by="cli")))
    return 0


def _cmd_grants_list(settings: Settings, args: argparse.Namespace) -> int:
    with _grants(settings, write=False) as grants:
        patient = grants.patient_key(args.patient, args.issuer) if args.patient else None
        found, after = [], 0
        while page := grants.listed(
            patient_key=patient, study_instance_uid=args.study, grantee=args.to, after=after,
            limit=500,
        ):  # fmt: skip
            found += page
            after = page[-1].id
    _print_json([_grant_json(grant) for grant in found])
    return 0


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ingest.status import status_report

    report = status_report(settings.index_location, limit=args.limit)
    if args.json:
        _print_json(report)
        return 0
    print(f"index {report['index']}")
    print(f"{'stage':<12} {'rows':>8}")
    for stage, count in report["stages"].items():
        print(f"{stage:<12} {count:>8}")
    oldest = report["oldest_pending"]
    if oldest is None:
        print("pending: 0")
    else:
        print(
            f"pending: {report['pending']}; oldest: record {oldest['record']} at stage "
            f"{oldest['stage']}, {oldest['age_s']} s old, {oldest['attempts']} attempts"
        )
    if report["failing"]:
        print("failing (most recent first):")
        print(f"  {'record':<14} {'stage':<12} {'attempts':>8} {'retry in':>9}  reason")
        for row in report["failing"]:
            retry = f"{row['next_attempt_in_s']:.0f} s"
            print(
                f"  {row['record']:<14} {row['stage']:<12} {row['attempts']:>8} {retry:>9}  "
                f"{row['last_error'] or ''}"
            )
    else:
        print("failing: none")
    if report["parked"]:
        print(f"parked at stage failed ({report['stages'].get('failed', 0)}; "
              "`xray-gateway retry --all` or `retry ROW…` re-queues them):")  # fmt: skip
        print(f"  {'row':>6} {'record':<14} {'stopped at':<12} {'attempts':>8}  reason")
        for row in report["parked"]:
            print(
                f"  {row['row']:>6} {row['record']:<14} {row['stage'] or '?':<12} "
                f"{row['attempts']:>8}  {row['last_error'] or ''}"
            )
    held = ", ".join(f"{worker} {n}" for worker, n in sorted(report["claims"].items()))
    print(f"held by workers: {held or 'none'}")
    if report["nodes"]:
        print(
            f"  {'node':<32} {'waiting':>8} {'held':>6} {'commitment open':>16} "
            f"{'undelivered':>12} {'reported':>9}"
        )
        for name, node in report["nodes"].items():
            requests = node["commitment_requests"]
            print(
                f"  {name or '(before node ids)':<32} {node['waiting']:>8} {node['claims']:>6} "
                f"{requests['open']:>16} {requests['ready']:>12} {requests['reported']:>9}"
            )
    commitments = report["commitment_requests"]
    print(
        f"storage commitment: {commitments['open']} open, {commitments['ready']} undelivered, "
        f"{commitments['reported']} reported"
    )
    for item in report["commitment_undelivered"]:
        print(
            f"  report {item['request']} for {item['calling_aet']}: {item['attempts']} "
            f"attempts, {item['last_error']}"
        )
    return 0


def _cmd_access(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.core.keys import load_pseudonym_key
    from gateway.index.db import Index
    from gateway.trust.trail import Trail

    index = Index(settings.index_location, readonly=True)
    try:
        trail = Trail(index, pseudonym_key=load_pseudonym_key(settings.keys_dir))
        entries, after = [], 0
        while page := trail.entries(study=args.study, who=args.user, after=after, limit=500):
            entries += page
            after = page[-1].entry.id
    finally:
        index.close()
    if args.json:
        _print_json([entry.as_json() for entry in entries])
        return 0
    print(f"{'entry':>7} {'when (UTC)':<19} {'who':<24} {'route':<16} {'verdict':<12} batch")
    for proven in entries:
        e = proven.entry
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at))
        batch = f"{proven.batch_id} (tx {proven.tx_hash})" if proven.batch_id else "not yet"
        verdict = e.verdict + ("" if e.served else " refused")
        print(f"{e.id:>7} {when:<19} {e.who[:24]:<24} {e.route:<16} {verdict:<12} {batch}")
        print(f"        {e.sop_instance_uid or '(no instance)'}")
    print(f"{len(entries)} entries; `--json` gives each with its leaf inputs and proof")
    return 0


def _cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """Every part of the benchmark; the headline numbers are printed, the rest is in the JSON."""
    from pathlib import Path

    from gateway.bench.run import KEYS, run_bench
    from gateway.bench.workload import FULL, QUICK

    logging.getLogger().setLevel(logging.WARNING)  # the progress display tells the story
    out = Path(args.out)
    results = run_bench(
        out_dir=out,
        work=Path(args.work) if args.work else out / "work",
        workload=QUICK if args.quick else FULL,
        quick=args.quick,
    )
    _print_json({key: results[key] for key in KEYS})
    print(f"written: {out / 'results.json'}, {out / 'results.png'}", file=sys.stderr)
    return 0


def _cmd_fuzz(settings: Settings, args: argparse.Namespace) -> int:
    """The seeded DICOM-port fuzz campaign against a fresh `up`; 1 when it found a problem."""
    from pathlib import Path

    from gateway.fuzz.campaign import Plan
    from gateway.fuzz.run import fuzz_fresh_gateway

    logging.getLogger().setLevel(logging.WARNING)  # the progress bar tells the story
    out = Path(args.out)
    plan = Plan(seed=args.seed, inputs=args.inputs, echo_every=args.echo_every,
                hang_s=args.hang_s, only=tuple(args.only or ()))  # fmt: skip
    report = fuzz_fresh_gateway(
        plan=plan, out=out, work=Path(args.work) if args.work else out.parent / "work" / "fuzz"
    )
    keys = ("inputs", "inputs_per_s", "crashes", "hangs", "echo_checks", "leftover_count",
            "slowest_input", "rss_mb")  # fmt: skip
    _print_json({key: report[key] for key in keys} | {"tracebacks": report["log"]["tracebacks"]})
    print(f"written: {out}", file=sys.stderr)
    clean = not (report["crashes"] or report["hangs"] or report["echo_checks"]["failed"]
                 or report["leftover_count"] or report["log"]["tracebacks"])  # fmt: skip
    return 0 if clean else 1


def _cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    """A consistent copy of the index (VACUUM INTO for SQLite, pg_dump for PostgreSQL)."""
    from pathlib import Path

    from gateway.index.backup import backup
    from gateway.index.engine import describe

    dest = Path(args.dest)
    size = backup(settings.index_location, dest)
    print(f"index {describe(settings.index_location)} copied to {dest} ({size} bytes)")
    return 0


def _cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    """Re-queue parked rows at the stage they stopped at; a running gateway picks them up."""
    from pathlib import Path

    from gateway.index.db import Index

    if not args.all and not args.rows:
        raise ConfigError("name the rows to re-queue (see `xray-gateway status`), or --all")
    location = settings.index_location
    if isinstance(location, Path) and not location.is_file():
        raise ConfigError(f"no index at {location}")
    index = Index(location)
    try:
        requeued = index.requeue(None if args.all else list(args.rows))
    finally:
        index.close()
    missing = sorted(set(args.rows) - set(requeued)) if not args.all else []
    print(f"re-queued {len(requeued)} row(s): {' '.join(map(str, requeued)) or '-'}")
    if missing:
        print(f"not parked (left alone): {' '.join(map(str, missing))}", file=sys.stderr)
        return 1
    return 0


# -- receipts and the append-only log (the receipts part) -----------------------------------

#: ``verify --receipt`` and ``log-consistency`` exit codes (README "Checking a receipt").
EXIT_VERIFIED, EXIT_FILE, EXIT_PROOF, EXIT_CHAIN, EXIT_UNPROVEN = 0, 3, 4, 5, 6


def _exit_code(checks: Sequence[Check]) -> int:
    """The exit code of the first failing check's kind (0 when all held)."""
    from gateway.core.receipt import CHAIN, FILE, UNPROVEN

    codes = {FILE: EXIT_FILE, CHAIN: EXIT_CHAIN, UNPROVEN: EXIT_UNPROVEN}
    failed = [check for check in checks if not check.ok]
    return codes.get(failed[0].kind, EXIT_PROOF) if failed else EXIT_VERIFIED


def _print_checks(title: str, checks: Sequence[Check], *, as_json: bool) -> None:
    if as_json:
        _print_json({"title": title, "checks": [vars(check) for check in checks]})
        return
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    failed = [check for check in checks if not check.ok]
    verdict = "VERIFIED" if not failed else f"NOT VERIFIED ({failed[0].name})"
    print(f"{title}: {verdict}")


def _read_log_key(path: str | None) -> NoteVerifier:
    """The auditor's copy of the log key (a vkey file, ``xray-gateway log-key`` > FILE)."""
    from pathlib import Path

    from gateway.core.checkpoint import parse_vkey

    if not path:
        raise ConfigError("--log-key KEYFILE is required: the log's vkey you were handed")
    try:
        return parse_vkey(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the log key {path}: {exc.strerror}") from None


def _cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Check each FILE against its receipt offline (``--receipt`` once per file, in order);
    with ``--chain``, on the chain too. The exit code is the first failing file's."""
    from pathlib import Path

    if len(args.files) != len(args.receipt):
        raise ConfigError("verify --receipt R FILE: give one --receipt per file, in order")
    key = _read_log_key(args.log_key) if args.log_key else None
    codes = [
        _verify_one_receipt(Path(receipt), Path(file), key, args)
        for receipt, file in zip(args.receipt, args.files, strict=True)
    ]
    return next((code for code in codes if code), EXIT_VERIFIED)


def _verify_one_receipt(
    receipt_path: Path, file: Path, key: NoteVerifier | None, args: argparse.Namespace
) -> int:
    from gateway.core.receipt import UNPROVEN, check_receipt, load_receipt

    if not file.is_file():
        raise ConfigError(f"{file} is not a file")
    try:
        receipt = load_receipt(receipt_path)
    except OSError as exc:
        raise ConfigError(f"cannot read the receipt {receipt_path}: {exc.strerror}") from None
    if receipt.anchoring == "batch" and key is None:
        raise ConfigError("--log-key KEYFILE is required: the log's vkey you were handed")
    checks = check_receipt(receipt, file, key)
    if args.chain and all(c.ok or c.kind == UNPROVEN for c in checks):
        from gateway.ledger import XrayLedger
        from gateway.trust.receipts import chain_checks

        offline = [c for c in checks if c.kind != UNPROVEN]
        checks = [*offline, *chain_checks(receipt, XrayLedger.at(args.chain, receipt.contract))]
    _print_checks(f"{file.name} against {receipt_path.name}", checks, as_json=args.json)
    return _exit_code(checks)


def _cmd_log_consistency(args: argparse.Namespace) -> int:
    """Check that the log at the NEW checkpoint still begins with the log at the OLD one."""
    from pathlib import Path

    from gateway.core.checkpoint import parse_checkpoint
    from gateway.core.receipt import check_consistency

    key = _read_log_key(args.log_key)
    try:
        old, new = Path(args.old).read_text(), Path(args.new).read_text()
        if args.proof:
            proof_json = json.loads(Path(args.proof).read_text())
        else:
            sizes = [parse_checkpoint(n[: n.rindex("\n\n") + 1]).size for n in (old, new)]
            proof_json = _api_get(args, f"/v1/log/consistency?first={sizes[0]}&second={sizes[1]}")
        proof = tuple(bytes.fromhex(node) for node in proof_json["proof"])
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a consistency proof or checkpoint: {exc}") from None
    checks = check_consistency(old_note=old, new_note=new, proof=proof, log_key=key)
    _print_checks("log consistency", checks, as_json=args.json)
    return _exit_code(checks)


def _api_get(args: argparse.Namespace, path: str, settings: Settings | None = None) -> Any:
    """GET ``path`` from the gateway's API (``--url``, ``--token-file``) as JSON."""
    from pathlib import Path

    import httpx

    url = args.url or f"http://127.0.0.1:{(settings or get_settings()).api_port}"
    token_file = Path(args.token_file) if args.token_file else get_settings().data_dir / "api-token"
    try:
        token = token_file.read_text().strip()
        reply = httpx.get(
            f"{url.rstrip('/')}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
    except OSError as exc:
        raise ConfigError(f"cannot read the API token {token_file}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the gateway at {url}: {exc}") from None
    if reply.status_code != 200:
        raise ConfigError(f"{url}{path} answered {reply.status_code}: {reply.text[:200]}")
    return reply.json()


def _cmd_receipt(settings: Settings, args: argparse.Namespace) -> int:
    """Fetch an instance's receipt from the running gateway and write it to ``-o FILE``."""
    from pathlib import Path

    receipt = _api_get(args, f"/v1/instances/{args.uid}/receipt", settings)
    text = json.dumps(receipt, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def _cmd_log_key(settings: Settings, args: argparse.Namespace) -> int:
    """Print the log's verifier key (vkey): hand it to auditors for ``--log-key``."""
    from gateway.core.checkpoint import load_log_key, verifier_of
    from gateway.ledger.bootstrap import open_ledger
    from gateway.trust.tlog import default_origin

    origin = settings.log_origin
    if not origin:
        ledger = open_ledger(settings)
        origin = default_origin(ledger.chain_id(), ledger.address)
    print(verifier_of(load_log_key(settings.keys_dir), origin).vkey())
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="xray-gateway",
        description="A DICOM gateway that fingerprints, seals and anchors every image before "
        "it reaches Orthanc. Settings come from GATEWAY_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"xray-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="run everything with embedded defaults (anvil, contract)")
    up.add_argument(
        "--external",
        action="store_true",
        help="start nothing embedded: use GATEWAY_CHAIN_URL (production, see docker/)",
    )
    up.set_defaults(handler=_cmd_up)

    worker = sub.add_parser(
        "worker", help="run the pipeline alone in this process (claims rows in the index)"
    )
    worker.add_argument(
        "--id", default=f"worker-{socket.gethostname()}",
        help="this worker's id among this node's running workers (the same id after a "
        "restart frees what it held at once; claims read <GATEWAY_NODE_ID>/<id>); "
        "default: worker-<hostname>",
    )  # fmt: skip
    worker.add_argument(
        "--no-anchor", action="store_true",
        help="leave the anchor stage to another worker (one process per recorder key anchors)",
    )  # fmt: skip
    worker.set_defaults(handler=_cmd_worker)

    listener = sub.add_parser(
        "listener",
        help="one DICOM listener process on the shared DICOM port (up starts GATEWAY_LISTENERS)",
    )
    listener.add_argument(
        "--id", required=True,
        help="this listener's id among the node's listener processes (listen-N); it owns the "
        "Storage Commitment requests it receives as <GATEWAY_NODE_ID>/<id>",
    )  # fmt: skip
    listener.set_defaults(handler=_cmd_listener)

    status = sub.add_parser(
        "status", help="queue depth per stage, oldest pending item, recent failures"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=10, help="failures to show (default 10)")
    status.set_defaults(handler=_cmd_status)

    access = sub.add_parser(
        "access", help="the access trail: who read a study, or what a reader read (with proofs)"
    )
    which = access.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="who read this Study Instance UID")
    which.add_argument("--user", metavar="NAME", help="what this reader (user, token) read")
    access.add_argument("--json", action="store_true", help="each entry with its proof")
    access.set_defaults(handler=_cmd_access)

    backup = sub.add_parser(
        "backup", help="a consistent copy of the index (SQLite: VACUUM INTO; PostgreSQL: pg_dump)"
    )
    backup.add_argument("dest", metavar="DEST", help="the new file (never overwritten)")
    backup.set_defaults(handler=_cmd_backup)

    retry = sub.add_parser(
        "retry", help="re-queue rows parked at stage failed (after their cause is fixed)"
    )
    retry.add_argument("rows", nargs="*", type=int, metavar="ROW", help="row ids from `status`")
    retry.add_argument("--all", action="store_true", help="every parked row")
    retry.set_defaults(handler=_cmd_retry)

    keys = sub.add_parser("keys", help="create or rotate the pseudonym key and KEKs")
    ksub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    kinit = ksub.add_parser("init", help="create missing keys (0600); never overwrites")
    kinit.set_defaults(handler=_cmd_keys_init)
    krotate = ksub.add_parser("rotate", help="new KEK; re-wrap every object's data key")
    krotate.add_argument(
        "--retire-old", action="store_true",
        help="then seal v1 objects again under their study keys and destroy every old KEK"
        " (every node stopped): a kept copy of a v1 object no longer opens",
    )  # fmt: skip
    krotate.set_defaults(handler=_cmd_keys_rotate)
    kupgrade = ksub.add_parser(
        "upgrade", help="seal v1 objects again under their study's key (v2: erasable)"
    )
    kupgrade.set_defaults(handler=_cmd_keys_upgrade)

    contract = sub.add_parser("contract", help="deploy the xray contract and manage its roles")
    csub = contract.add_subparsers(dest="action", metavar="ACTION", required=True)
    deploy = csub.add_parser(
        "deploy", help="deploy the contract once with the admin key, pin it, grant the recorder"
    )
    deploy.add_argument("--admin", help="address that gets the admin role (default: the deployer)")
    deploy.set_defaults(handler=_cmd_contract_deploy)
    grant = csub.add_parser("grant", help="give an account a role (setPermission)")
    grant.add_argument("account", help="0x address")
    grant.add_argument("--role", choices=sorted(ROLES), required=True)
    grant.add_argument("--name", required=True, help="display name, e.g. 'Dr.Lee'")
    grant.set_defaults(handler=_cmd_contract_grant)
    revoke = csub.add_parser("revoke", help="take a role away, or every role (removePermission)")
    revoke.add_argument("account", help="0x address")
    revoke.add_argument("--role", choices=sorted(ROLES), help="only this role (default: all)")
    revoke.set_defaults(handler=_cmd_contract_revoke)
    info = csub.add_parser("info", help="address, chain, compiler and counts; roles of accounts")
    info.add_argument("--account", action="append", help="also show this account's roles")
    info.set_defaults(handler=_cmd_contract_info)

    verify = sub.add_parser(
        "verify",
        help="verify DICOM files against the ledger alone (chain URL, contract, pseudonym key)",
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--chain-url", help="JSON-RPC URL (default: GATEWAY_CHAIN_URL / embedded)")
    verify.add_argument("--contract", help="xray contract address (default: the deployment)")
    verify.add_argument("--pseudonym-key", help="pseudonym key file (default: in the keys dir)")
    verify.add_argument(
        "--proofs",
        metavar="URL",
        help="a gateway API to ask for batch proofs (they are checked on chain, not trusted)",
    )
    verify.add_argument("--token-file", help="API token for --proofs")
    verify.add_argument(
        "--trusted-recorders",
        metavar="ADDRESSES",
        help="only these recorders' records count, comma-separated (default "
        "GATEWAY_TRUSTED_RECORDERS, else whoever held the Recorder role when it wrote)",
    )
    verify.add_argument("--json", action="store_true", help="full verdicts as JSON")
    verify.add_argument(
        "--receipt",
        metavar="R",
        action="append",
        help="check FILE against receipt R offline, no gateway (once per FILE, in order; "
        "exit codes in docs/receipts.md)",
    )
    verify.add_argument(
        "--log-key", metavar="KEYFILE", help="the log's vkey (xray-gateway log-key)"
    )
    verify.add_argument(
        "--chain", metavar="URL", help="with --receipt: also check it on this JSON-RPC node"
    )
    verify.set_defaults(handler=_cmd_verify, offline=lambda args: bool(args.receipt))

    receipt = sub.add_parser("receipt", help="write an instance's receipt (xray-receipt/1)")
    receipt.add_argument("uid", help="SOP Instance UID")
    receipt.add_argument("-o", "--output", default="-", metavar="FILE", help="default: stdout")
    receipt.add_argument("--url", help="the gateway's API (default: this host's)")
    receipt.add_argument("--token-file", help="API token (default: the data dir's api-token)")
    receipt.set_defaults(handler=_cmd_receipt)

    log_key = sub.add_parser("log-key", help="print the log's verifier key (vkey) for auditors")
    log_key.set_defaults(handler=_cmd_log_key)

    consistency = sub.add_parser(
        "log-consistency", help="check that the log at NEW still begins with the log at OLD"
    )
    consistency.add_argument("old", metavar="OLD", help="the older signed checkpoint (a file)")
    consistency.add_argument("new", metavar="NEW", help="the newer signed checkpoint (a file)")
    consistency.add_argument("--log-key", metavar="KEYFILE", help="the log's vkey")
    source = consistency.add_mutually_exclusive_group()
    source.add_argument(
        "--proof", metavar="FILE", help="the proof (GET /v1/log/consistency's JSON)"
    )
    source.add_argument("--url", help="ask this gateway's API for the proof")
    consistency.add_argument("--token-file", help="API token for --url")
    consistency.add_argument("--json", action="store_true", help="the checks as JSON")
    consistency.set_defaults(
        handler=lambda _s, a: _cmd_log_consistency(a), offline=lambda args: bool(args.proof)
    )

    audit = sub.add_parser("audit", help="sweep the archive: Orthanc vs object store vs ledger")
    audit.add_argument("--json", action="store_true", help="the report as JSON")
    audit.set_defaults(handler=_cmd_audit)

    restore = sub.add_parser("restore", help="put the verified original back into Orthanc")
    restore.add_argument("uid", help="SOP Instance UID")
    restore.set_defaults(handler=_cmd_restore)

    erase = sub.add_parser(
        "erase", help="erase a study or a patient's studies (crypto-shredding), in two steps"
    )
    what = erase.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", help="Study Instance UID (dry run)")
    what.add_argument("--patient", help="Patient ID: every study of the patient (dry run)")
    what.add_argument("--confirm", metavar="HASH", help="erase what the dry run with HASH listed")
    what.add_argument(
        "--status", metavar="HASH", help="where the erasure stands, and which nodes have shed"
    )
    erase.add_argument("--issuer", default="", help="Issuer of Patient ID, with --patient")
    erase.add_argument(
        "--reason", help="why (required but with --status): gdpr_art17, patient_request, retention_expired, "
        "legal_order or wrong_patient (the same for the dry run and its confirmation)",
    )  # fmt: skip
    erase.set_defaults(handler=_cmd_erase)

    retention = sub.add_parser(
        "retention", help="studies past their modality's retention period (GATEWAY_RETENTION)"
    )
    retention.add_argument(
        "--now", action="store_true", help="list them now rather than show the job's last list"
    )
    retention.set_defaults(handler=_cmd_retention)

    bench = sub.add_parser(
        "bench", help="measure against Orthanc direct and the design's targets (make bench)"
    )
    bench.add_argument("--quick", action="store_true", help="a tiny workload (checks, no numbers)")
    bench.add_argument("--out", default="bench", help="where results.json/.png go (default bench)")
    bench.add_argument("--work", help="scratch and generated fixtures (default OUT/work)")
    bench.set_defaults(handler=_cmd_bench)

    fuzz = sub.add_parser(
        "fuzz", help="seeded fuzz campaign over the DICOM port of a fresh `up` (make fuzz)"
    )
    fuzz.add_argument("--seed", type=int, default=1, help="seed of the input stream (default 1)")
    fuzz.add_argument("--inputs", type=int, default=10_000, help="inputs to send (default 10000)")
    fuzz.add_argument("--echo-every", type=int, default=100, help="C-ECHO check period")
    fuzz.add_argument("--hang-s", type=float, default=30.0, help="seconds before a hang")
    fuzz.add_argument("--only", type=int, nargs="+", metavar="INDEX", help="replay these inputs")
    fuzz.add_argument("--out", default="bench/fuzz-report.json", help="the JSON report")
    fuzz.add_argument(
        "--work", help="scratch: the gateway's data dir and corpus (default bench/work/fuzz)"
    )
    fuzz.set_defaults(handler=_cmd_fuzz)

    grant = sub.add_parser(
        "grant", help="grant read access to a study or a patient's studies until an expiry"
    )
    subject = grant.add_mutually_exclusive_group()
    subject.add_argument(
        "--study", metavar="UID",
        help="one study (Study Instance UID); with --extend: narrow a patient grant to it",
    )  # fmt: skip
    subject.add_argument("--patient", metavar="ID", help="every study of this PatientID")
    grant.add_argument("--issuer", default="", help="IssuerOfPatientID (with --patient)")
    grant.add_argument(
        "--to", metavar="NAME|ADDRESS",
        help="a named grantee (a grantee token is issued if it has none) or an account 0x…",
    )  # fmt: skip
    grant.add_argument("--until", metavar="ISO8601", help="the expiry")
    grant.add_argument(
        "--extend", type=int, metavar="GRANT_ID",
        help="carry a standing grant on under --until and/or narrowed to --study: a new "
        "grant, then the old one revoked",
    )  # fmt: skip
    grant.set_defaults(handler=_cmd_grant)
    revoke_grant = sub.add_parser("revoke", help="revoke a grant now (on chain)")
    revoke_grant.add_argument("grant_id", type=int, metavar="GRANT_ID")
    revoke_grant.set_defaults(handler=_cmd_revoke)
    grants = sub.add_parser("grants", help="list grants, by patient, study or grantee")
    grants_of = grants.add_mutually_exclusive_group(required=True)
    grants_of.add_argument("--patient", metavar="ID", help="a patient's (study grants too)")
    grants_of.add_argument("--study", metavar="UID")
    grants_of.add_argument("--to", metavar="NAME|ADDRESS", help="a grantee's")
    grants.add_argument("--issuer", default="", help="IssuerOfPatientID (with --patient)")
    grants.set_defaults(handler=_cmd_grants_list)

    token = sub.add_parser(
        "token", help="API tokens with roles (admin, auditor, clinician, grantee)"
    )
    tsub = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    tcreate = tsub.add_parser("create", help="issue a token (printed once)")
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument(
        "--role", choices=["admin", "auditor", "clinician", "grantee"], required=True
    )
    tcreate.set_defaults(handler=_cmd_token_create)
    tlist = tsub.add_parser("list", help="names and roles of issued tokens")
    tlist.set_defaults(handler=_cmd_token_list)
    trevoke = tsub.add_parser("revoke", help="forget a token")
    trevoke.add_argument("name")
    trevoke.set_defaults(handler=_cmd_token_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors become one-line messages and exit code 1."""
    args = build_parser().parse_args(argv)
    # One stderr handler, carrying the peer-log filter: a hostile DICOM peer gets concise,
    # rate-limited lines. (basicConfig leaves a process that set up its logging alone.)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stderr.addFilter(peerlog.PeerLogFilter())
    logging.basicConfig(level=logging.INFO, handlers=[stderr])
    # pynetdicom's INFO and DEBUG output describes associations and, at DEBUG, datasets:
    # keep it to warnings so that no patient data reaches the logs.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apiron").setLevel(logging.WARNING)  # one line per Orthanc request
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    offline: Callable[[argparse.Namespace], bool] = getattr(args, "offline", lambda _a: False)
    try:
        if offline(args):  # an auditor's check needs no gateway, not even its settings
            return handler(cast(Settings, None), args)
        return handler(get_settings(), args)
    except GatewayError as exc:
        print(f"xray-gateway: error: {exc}", file=sys.stderr)
        return 1
