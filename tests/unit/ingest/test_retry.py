"""One backoff: the pipeline's from 0.5 s, the commitment SCP's from 1 s, both doubling to a cap."""

from __future__ import annotations

from gateway.ingest.retry import backoff


def test_a_pipeline_stage_waits_half_a_second_then_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff(9) == 256.0 and backoff(10) == 300.0  # five minutes by default
    assert [backoff(n, cap=60.0) for n in (6, 7, 8)] == [32.0, 60.0, 60.0]


def test_a_commitment_report_waits_one_second_then_doubles_up_to_five_minutes() -> None:
    assert [backoff(n, base=1.0) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(8, base=1.0) == 256.0 and backoff(9, base=1.0) == 300.0


def test_no_number_of_attempts_overflows() -> None:
    assert backoff(10**6) == 300.0 and backoff(10**6, base=1.0, cap=60.0) == 60.0
