"""A node joining a shared index is refused with keys other than its rows were written with."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.keys import Kek, Keyring, record_key
from gateway.errors import KeysDiffer
from gateway.index.db import Index
from gateway.index.keycheck import check_shared_keys

CT = "1.2.840.10008.5.1.4.1.1.2"
PSEUDONYM = b"p" * 32
KEYRING = Keyring.of(Kek("kek-20261205-aaaa", b"k" * 32))


@pytest.fixture
def index(tmp_path: Path) -> Index:
    index = Index(tmp_path / "index.sqlite")
    row = index.add_received(entry_id="e1", sop_instance_uid="1.2.3.4", sop_class_uid=CT,
                             calling_aet="CT1", size=1)  # fmt: skip
    index.update(row, record_key=record_key(PSEUDONYM, "1.2.3.4"), kek_id="kek-20261205-aaaa")
    return index


def test_the_keys_the_rows_were_written_with_pass(index: Index) -> None:
    check_shared_keys(index, pseudonym_key=PSEUDONYM, keyring=KEYRING)
    index.close()


def test_an_empty_index_takes_any_keys(tmp_path: Path) -> None:
    empty = Index(tmp_path / "empty.sqlite")
    check_shared_keys(empty, pseudonym_key=b"q" * 32, keyring=KEYRING)
    empty.close()


def test_another_pseudonym_key_is_refused(index: Index) -> None:
    with pytest.raises(KeysDiffer, match="pseudonym key"):
        check_shared_keys(index, pseudonym_key=b"q" * 32, keyring=KEYRING)
    index.close()


def test_a_keyring_without_the_rows_kek_is_refused(index: Index) -> None:
    other = Keyring.of(Kek("kek-20261205-bbbb", b"k" * 32))
    with pytest.raises(KeysDiffer, match="kek-20261205-aaaa"):
        check_shared_keys(index, pseudonym_key=PSEUDONYM, keyring=other)
    index.close()
