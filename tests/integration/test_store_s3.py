"""The S3 backend against a real moto server, including an outage through a cut relay."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.errors import ConfigError, StoreError, StoreUnavailable
from gateway.store import open_store
from gateway.store.s3 import S3Store
from tests.integration.s3 import MotoServer, Relay
from tests.unit.store.test_fs import StoreContract, name_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ACCESS_KEY = "gateway-test-access"
SECRET_KEY = "gateway-test-secret-do-not-log"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One real moto S3 server for this module."""
    server = MotoServer(log_dir=tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


def make_store(endpoint: str, **options: Any) -> S3Store:
    """A store on a bucket of its own, which its first put creates."""
    return S3Store(
        endpoint=endpoint,
        bucket=f"xray-test-{uuid.uuid4().hex[:16]}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        **options,
    )


class TestS3Store(StoreContract):
    # Two 8 MiB parts (the one sent, the next read), plus slack for the SDK and urllib3.
    memory_budget = 24 * MiB

    @pytest.fixture
    def store(self, moto: MotoServer) -> S3Store:
        return make_store(moto.endpoint)


def test_the_first_put_creates_the_bucket(moto: MotoServer) -> None:
    store = make_store(moto.endpoint)
    assert list(store.names()) == []  # no bucket yet is an empty store, not an error
    store.put(name_of("first"), io.BytesIO(b"abc"), length=3)
    assert list(store.names()) == [name_of("first")]
    # A second store object on the same bucket finds it there.
    again = make_store(moto.endpoint)
    again.bucket = store.bucket
    again.put(name_of("second"), io.BytesIO(b"def"), length=3)
    assert list(store.names()) == sorted([name_of("first"), name_of("second")])


def test_large_objects_go_up_as_multipart_in_bounded_parts(moto: MotoServer) -> None:
    store = make_store(moto.endpoint, part_size=5 * MiB)
    name, data = name_of("multipart"), os.urandom(12 * MiB)
    store.put(name, io.BytesIO(data), length=len(data))
    etag = store._client.stat_object(store.bucket, name).etag or ""
    assert etag.endswith("-3"), f"expected a 3-part upload, got ETag {etag}"
    with store.open(name) as stream:
        assert stream.read() == data


def test_credentials_reach_no_repr_log_or_error(
    moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_store(moto.endpoint)
    store.put(name_of("logged"), io.BytesIO(b"abc"), length=3)
    with store.open(name_of("logged")) as stream:
        stream.read()
    with pytest.raises(StoreError) as caught:
        store.put(name_of("logged"), io.BytesIO(b"ab"), length=2)
    for text in (repr(store), str(caught.value), caplog.text):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


# Outages: the store reached through a relay that the tests cut or stall.


@pytest.fixture
def relay(moto: MotoServer) -> Iterator[Relay]:
    relay = Relay((moto.host, moto.port))
    relay.start()
    yield relay
    relay.stop()


def outage_store(relay: Relay, **options: Any) -> S3Store:
    settings: dict[str, Any] = {
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "retries": 1,
        "deadline": 3.0,
        "min_throughput": 1024.0 * MiB,  # the fixed part of the deadline is what we test
        "check_timeout": 2.0,
        "part_size": 5 * MiB,
    }
    return make_store(relay.endpoint, **{**settings, **options})


def test_put_and_check_fail_fast_while_the_store_is_down_and_recover(relay: Relay) -> None:
    store = outage_store(relay)
    store.put(name_of("before"), io.BytesIO(b"before"), length=6)

    relay.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.put(name_of("during"), io.BytesIO(b"during"), length=6)
    assert time.monotonic() - started < store.put_deadline(6) + 1.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check()
    assert time.monotonic() - started < 2.0 + 1.0
    with pytest.raises(StoreUnavailable):
        store.open(name_of("before"))

    relay.start()
    store.check()
    store.put(name_of("during"), io.BytesIO(b"during"), length=6)
    with store.open(name_of("during")) as stream:
        assert stream.read() == b"during"


class StallingSource(io.BytesIO):
    """Bytes that stall the relay once ``after`` of them have been read: a link dies mid-put."""

    def __init__(self, data: bytes, *, relay: Relay, after: int) -> None:
        super().__init__(data)
        self.relay, self.after = relay, after

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.after:
            self.relay.stall()
        return super().read(size)


def test_a_put_stalled_mid_upload_gives_up_at_its_deadline(relay: Relay) -> None:
    # A read timeout far beyond the deadline: only the deadline can end this put.
    store = outage_store(relay, read_timeout=60.0, deadline=2.0)
    store.put(name_of("warm-up"), io.BytesIO(b"abc"), length=3)  # bucket exists now
    name, data = name_of("stalled"), os.urandom(12 * MiB)
    source = StallingSource(data, relay=relay, after=6 * MiB)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="within"):
        store.put(name, source, length=len(data))
    elapsed = time.monotonic() - started
    assert store.put_deadline(len(data)) <= elapsed < store.put_deadline(len(data)) + 1.5

    # The abandoned upload no longer reads the caller's stream, so the caller may close
    # it or hand it to the next attempt.
    position = source.tell()
    time.sleep(0.5)
    assert source.tell() == position
    with pytest.raises(StoreUnavailable):
        store.check()  # still stalled: the readiness probe says so within its own timeout

    relay.start()  # the link returns; the stalled connections are gone
    assert not store.exists(name), "a partial upload must never become visible"
    store.put(name, io.BytesIO(data), length=len(data))
    assert store.size(name) == len(data)
    with store.open(name) as stream:
        assert stream.read() == data


def test_concurrent_puts_of_one_name_end_with_one_intact_object(moto: MotoServer) -> None:
    store = make_store(moto.endpoint, part_size=5 * MiB)
    name, data = name_of("race"), os.urandom(11 * MiB)
    store.ensure_bucket()
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put(name, io.BytesIO(data), length=len(data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(store.names()) == [name]
    with store.open(name) as stream:
        assert stream.read() == data


# open_store with s3 URLs (no traffic: the client connects lazily).


def test_open_store_s3_urls() -> None:
    plain = open_store("s3://127.0.0.1:9000/xray-objects", access_key="a", secret_key="b")
    assert isinstance(plain, S3Store)
    assert (plain.endpoint, plain.bucket, plain.secure) == ("127.0.0.1:9000", "xray-objects", False)
    tls = open_store("s3+https://minio.example:9443/xray", access_key="a", secret_key="b")
    assert isinstance(tls, S3Store)
    assert (tls.endpoint, tls.bucket, tls.secure) == ("minio.example:9443", "xray", True)
    assert repr(tls) == "S3Store(s3+https://minio.example:9443/xray)"


@pytest.mark.parametrize(
    ("url", "keys"),
    [
        ("s3://127.0.0.1:9000/xray", (None, None)),
        ("s3://127.0.0.1:9000/xray", ("a", None)),
        ("s3://user:hunter2@127.0.0.1:9000/xray", ("a", "b")),
        ("s3://127.0.0.1:9000/", ("a", "b")),
        ("s3://127.0.0.1:9000/xray/sub", ("a", "b")),
        ("s3://127.0.0.1:notaport/xray", ("a", "b")),
        ("s3://127.0.0.1:9000/Bad_Bucket", ("a", "b")),
        ("s3:///xray", ("a", "b")),
    ],
)
def test_open_store_refuses_bad_s3_urls(url: str, keys: tuple[str | None, str | None]) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url, access_key=keys[0], secret_key=keys[1])
    assert "hunter2" not in str(caught.value)
