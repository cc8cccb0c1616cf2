"""`xray-gateway keys init|rotate` on a real store: rotation re-wraps, never re-encrypts."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

from gateway.core.keys import load_keyring
from gateway.core.seal import open_sealed, read_seal_header, seal
from gateway.store import open_store
from tests.integration.gateway_proc import gateway_env, run


def test_keys_init_then_rotate_rewraps_every_object(tmp_path: Path) -> None:
    env = gateway_env(tmp_path / "var")
    first = run(env, "keys", "init")
    assert first.returncode == 0, first.stderr
    keys_dir = tmp_path / "var" / "keys"
    for path in keys_dir.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    again = run(env, "keys", "init")
    assert again.returncode == 0
    old = load_keyring(keys_dir)

    store = open_store(f"file://{tmp_path / 'var' / 'objects'}", access_key=None, secret_key=None)
    record_key, digest = b"\x01" * 32, b"\x02" * 32
    plaintext = b"DICM-ish bytes " * 100_000
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, record_key=record_key, digest=digest, kek=old.current)
    name = f"{record_key.hex()}/{digest.hex()}"
    store.put(name, io.BytesIO(sealed.getvalue()), length=len(sealed.getvalue()))

    rotated = run(env, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    report = json.loads(rotated.stdout)
    assert report["rewrapped"] == 1 and report["current_kek"] != old.current.kek_id
    new = load_keyring(keys_dir)
    with store.open(name) as stream:
        after = stream.read()
    assert read_seal_header(io.BytesIO(after)).kek_id == report["current_kek"]
    # segments are byte-identical: nothing was re-encrypted
    before_header = read_seal_header(io.BytesIO(sealed.getvalue())).size
    after_header = read_seal_header(io.BytesIO(after)).size
    assert after[after_header:] == sealed.getvalue()[before_header:]
    out = io.BytesIO()
    open_sealed(io.BytesIO(after), out, record_key=record_key, digest=digest, keyring=new)
    assert out.getvalue() == plaintext
