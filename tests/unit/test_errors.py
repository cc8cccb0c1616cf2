"""The exception tree says what is transient: an Unavailable, or the OS saying "not now"."""

from __future__ import annotations

import errno
import inspect
import re

import pytest

from gateway import errors
from gateway.errors import (
    ChainUnavailable,
    ContractRevert,
    DatasetUnreadable,
    ForwardError,
    GatewayError,
    LedgerError,
    MustWait,
    PacsRejected,
    PacsUnavailable,
    SpoolSwapped,
    SpoolUnavailable,
    StoreError,
    StoreUnavailable,
    TransactionFailed,
    TransactionPending,
    Unavailable,
    XrayNotRecorder,
    is_transient,
)

#: The pipeline's waits and outages: retried for as long as it takes.
TRANSIENT = [
    StoreUnavailable("x"), ChainUnavailable("x"), TransactionPending("x", tx_hash="0x1"),
    PacsUnavailable("x", status=503), SpoolUnavailable("x"), MustWait("x"),
    TimeoutError(), ConnectionResetError(), OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EIO, "Input/output error"),
]  # fmt: skip
#: Everything else needs a person after a few tries.
PERMANENT = [
    PacsRejected("x", status=400), XrayNotRecorder(), ContractRevert(), TransactionFailed("x"),
    StoreError("x"), ForwardError("x"), LedgerError("x"), DatasetUnreadable("x"),
    SpoolSwapped("x"), ValueError("bug"), FileNotFoundError(), PermissionError(),
]  # fmt: skip


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_outages_and_waits_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_every_other_failure_is_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_an_outage_is_also_an_error_of_its_area() -> None:
    """``except StoreError`` still sees a StoreUnavailable, as before the tree said more."""
    assert issubclass(StoreUnavailable, StoreError) and issubclass(StoreUnavailable, Unavailable)
    assert issubclass(ChainUnavailable, LedgerError) and issubclass(ChainUnavailable, Unavailable)
    assert issubclass(PacsUnavailable, ForwardError) and issubclass(PacsUnavailable, Unavailable)
    assert issubclass(TransactionPending, TransactionFailed)
    assert PacsUnavailable("x", status=503).status == 503
    assert TransactionPending("x", tx_hash="0x1").tx_hash == "0x1"


def test_every_exception_is_drawn_in_the_tree() -> None:
    tree = (errors.__doc__ or "").split("::")[1]
    drawn = set(re.findall(r"\b[A-Z][A-Za-z]+\b", tree))
    for name, value in vars(errors).items():
        if not (inspect.isclass(value) and issubclass(value, GatewayError)):
            continue
        if issubclass(value, ContractRevert) and value is not ContractRevert:
            continue  # one per custom error of the ABI: drawn as a group
        assert name in drawn, name


def test_the_marked_exceptions_are_the_unavailable_ones() -> None:
    drawn = errors.__doc__ or ""
    marked = {
        line.split("── ")[1].split()[0]
        for line in drawn.splitlines()
        if "── " in line and line.split("── ")[1].split()[1:2] == ["*"]
    }
    unavailable = {
        name for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Unavailable)
    }  # fmt: skip
    assert marked == unavailable
