"""Association slots shared by a node's listener processes: flocks on slot files, dropped
by the kernel when a holder dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.ingest.slots import SharedSlots

HOLDER = """
import sys, time
from pathlib import Path
from gateway.ingest.slots import SharedSlots
held = SharedSlots(Path(sys.argv[1]), port=104, total=3, per_host=2).take("10.0.0.1")
print("held" if isinstance(held, tuple) else held, flush=True)
time.sleep(600)
"""


def test_the_caps_hold_over_every_holder_and_a_slot_given_back_is_free(tmp_path: Path) -> None:
    one, two = (SharedSlots(tmp_path, port=104, total=3, per_host=2) for _ in range(2))
    first, second = one.take("10.0.0.1"), two.take("10.0.0.1")
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert one.take("10.0.0.1") == (
        "GATEWAY_MAX_ASSOCIATIONS_PER_HOST (2) reached for 10.0.0.1 over the node's listeners"
    )
    other = two.take("10.0.0.2")
    assert isinstance(other, tuple)
    assert one.take("10.0.0.3") == "GATEWAY_MAX_ASSOCIATIONS (3) reached over the node's listeners"
    SharedSlots.give_back(second)
    again = one.take("10.0.0.1")
    assert isinstance(again, tuple)
    # another port counts apart
    assert isinstance(SharedSlots(tmp_path, port=2762, total=3, per_host=2).take("10.0.0.1"), tuple)


def test_the_slots_of_a_listener_that_died_are_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        slots = SharedSlots(tmp_path, port=104, total=3, per_host=2)
        mine = slots.take("10.0.0.1")
        assert isinstance(mine, tuple)
        assert isinstance(slots.take("10.0.0.1"), str)  # the holder has the other one
        holder.kill()
        holder.wait(30)
        assert isinstance(slots.take("10.0.0.1"), tuple)  # the kernel dropped its lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        assert holder.stdout is not None
        holder.stdout.close()
