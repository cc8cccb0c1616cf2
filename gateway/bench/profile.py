"""Profile the gateway's receive path under storescu load with py-spy (docs/performance.md).

``python -m gateway.bench.profile [--slices N] [--gil] [--out DIR]`` starts a fresh
``xray-gateway up``, attaches ``py-spy record`` to it, sends the CT series with storescu,
waits until every instance is committed, and prints where each thread spent its
samples (own frames, then the gateway's frames on the stack). ``--gil`` samples only
the thread holding the GIL: where Python time goes rather than where threads wait.
The collapsed stacks are kept in ``DIR/profile.txt`` (flamegraph input).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import dicom_fixtures
from gateway.bench.ingest import sop_uids
from gateway.bench.peers import Gateway, storescu

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def hot_frames(collapsed: Path, *, top: int = 12) -> str:
    """Per thread: samples, the hottest leaf frames and the hottest gateway frames."""
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    ours: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = re.sub(r"\s*\(?0x[0-9a-f]+\)?|\d{3,}", "", frames[0]).strip() or frames[0]
        thread = re.sub(r"-\d+", "-N", re.sub(r"_\d+", "_N", thread))
        n = int(count)
        totals[thread] += n
        leaves[thread][frames[-1]] += n
        gateway = [f for f in frames[1:] if "gateway/" in f and "bench/" not in f]
        if gateway:
            ours[thread][gateway[-1]] += n
    lines = []
    for thread, total in totals.most_common():
        lines.append(f"== {thread}: {total} samples")
        for frame, n in leaves[thread].most_common(top):
            lines.append(f"  {100 * n / total:5.1f} %  leaf  {frame}")
        for frame, n in ours[thread].most_common(top // 2):
            lines.append(f"  {100 * n / total:5.1f} %  ours  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    parser.add_argument("--out", default="bench/work/profile")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out / "var", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((out / "slices").glob("*.dcm"))
    if len(files) != args.slices:
        shutil.rmtree(out / "slices", ignore_errors=True)
        files = dicom_fixtures.ct_series(out / "slices", count=args.slices)
    gateway = Gateway(out / "var")
    gateway.start()
    collapsed = out / "profile.txt"
    spy_argv = [PY_SPY, "record", "--pid", str(gateway.pid), "--threads", "--rate",
                str(args.rate), "--format", "raw", "--output", str(collapsed), "--nonblocking"]  # fmt: skip
    spy_argv += ["--gil"] if args.gil else ["--idle"]
    spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # py-spy attached
        started = time.time()
        ack = storescu(gateway.dicom_port, files, called=gateway.ae_title)
        rows = gateway.wait_done(sop_uids(files))
        commit = max(r["committed_at"] for r in rows) - started
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(10)
        gateway.stop()
    print(f"{len(files)} slices: ack {ack:.3f} s, commit {commit:.3f} s (under py-spy)")
    print(hot_frames(collapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
