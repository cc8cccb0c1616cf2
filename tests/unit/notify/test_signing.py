"""Standard Webhooks signatures: the spec's published vector, and what a receiver checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.notify import signing

# The test vector of the Standard Webhooks reference libraries.
SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_matches_the_specs_vector() -> None:
    key = signing.secret_from(SECRET)
    assert signing.signature(key, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY) == EXPECTED


def test_a_receiver_accepts_the_headers_and_refuses_any_change() -> None:
    key = signing.secret_from(SECRET)
    sent = signing.headers(key, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    assert sent["webhook-id"] == MSG_ID and sent["webhook-timestamp"] == str(TIMESTAMP)
    assert signing.verify(key, received=sent, body=BODY, now=TIMESTAMP + 10)
    assert not signing.verify(key, received=sent, body=BODY + b" ", now=TIMESTAMP)
    assert not signing.verify(
        key, received={**sent, "webhook-id": "other"}, body=BODY, now=TIMESTAMP
    )
    assert not signing.verify(b"another key 1234", received=sent, body=BODY, now=TIMESTAMP)
    assert not signing.verify(key, received=sent, body=BODY, now=TIMESTAMP + 301)  # replayed
    rotated = {**sent, "webhook-signature": f"v1,AAAA {sent['webhook-signature']}"}
    assert signing.verify(key, received=rotated, body=BODY, now=TIMESTAMP)


def test_the_secret_file_must_be_0600_and_a_real_secret(tmp_path: Path) -> None:
    path = tmp_path / "webhook-secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    with pytest.raises(ConfigError, match="readable by others") as refused:
        signing.load_secret(path)
    assert "MfKQ" not in str(refused.value)
    os.chmod(path, 0o600)
    assert signing.load_secret(path) == signing.secret_from(SECRET)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        signing.load_secret(path)
    path.write_bytes(b"whsec_not*base64")
    with pytest.raises(ConfigError, match="invalid base64") as refused:
        signing.load_secret(path)
    assert "not*base64" not in str(refused.value)
