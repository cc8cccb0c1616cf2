"""The object store contract, run against the in-memory stand-in, plus its outage switch."""

from __future__ import annotations

import io

import pytest

from gateway.errors import StoreUnavailable
from gateway.store.memory import MemoryStore
from tests.unit.store.test_fs import MiB, StoreContract, name_of


class TestMemoryStore(StoreContract):
    # It holds each object whole, by design: a put peaks at the object (64 MiB) and its copy,
    # a read at the object it holds and one chunk (the reader shares the object's bytes).
    memory_budget = 160 * MiB
    read_budget = 72 * MiB

    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


def test_an_outage_fails_every_call_until_it_is_over() -> None:
    store, name = MemoryStore(), name_of("outage")
    store.put(name, io.BytesIO(b"abc"), length=3)
    store.outage = StoreUnavailable("connection refused")
    for call in (
        lambda: store.put(name_of("other"), io.BytesIO(b"x"), length=1),
        lambda: store.open(name),
        lambda: store.exists(name),
        lambda: list(store.names()),
        store.check,
    ):
        with pytest.raises(StoreUnavailable):
            call()
    store.outage = None
    assert list(store.names()) == [name] and not store.exists(name_of("other"))
