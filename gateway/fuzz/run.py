"""``xray-gateway fuzz``: a fresh ``up`` on free ports, the campaign against it, the JSON report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.bench.peers import Gateway
from gateway.fuzz.campaign import Plan, Tally, Target, run_campaign


def fuzz_fresh_gateway(*, plan: Plan, out: Path, work: Path) -> dict[str, Any]:
    """Start ``up`` over a fresh data dir under ``work``, fuzz it, stop it; write ``out``."""
    work = work.resolve()  # Orthanc runs in its own directory: every path is absolute
    data_dir = work / "gateway"
    shutil.rmtree(data_dir, ignore_errors=True)
    gateway = Gateway(data_dir)
    console = Console(stderr=True)
    console.print(f"starting xray-gateway up in {data_dir} (anvil, contract, Orthanc)")
    gateway.start()
    exit_code: int | None = None
    try:
        target = Target(
            host="127.0.0.1",
            port=gateway.dicom_port,
            ae_title=gateway.ae_title,
            pid=gateway.pid,
            data_dir=data_dir,
            log=data_dir.parent / f"{data_dir.name}-up.log",
        )
        with Progress(
            TextColumn("fuzz seed {task.fields[seed]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("fuzz", total=len(plan.indexes()), seed=plan.seed, summary="")

            def show(done: int, total: int, tally: Tally) -> None:
                summary = (f"hangs {len(tally.hangs)} · echo ok {tally.echo['passed']} "
                           f"failed {tally.echo['failed'] + tally.echo['no_answer']} · "
                           f"acked {len(tally.ledger.acked)}")  # fmt: skip
                bar.update(task, completed=done, total=total, summary=summary)
                if done % plan.echo_every == 0 and not console.is_terminal:  # a log, not a bar
                    console.print(f"{done}/{total} inputs: {summary}")

            report = run_campaign(target, plan, workdir=work / "inputs", progress=show)
    finally:
        exit_code = gateway.stop()
    report["gateway_exit_code"] = exit_code
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
