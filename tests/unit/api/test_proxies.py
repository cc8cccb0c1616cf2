"""Which proxies' ``X-Forwarded-For`` the API believes (``GATEWAY_API_TRUSTED_PROXIES``): the
client address it names is the one the rate limits and the sign-in buckets count, so a
proxy must be named, and a client that is not a named proxy cannot name any address."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from gateway.config import Settings
from gateway.procs import free_port
from gateway.stack import api_server_config
from tests.serve import serve


def _echo() -> FastAPI:
    app = FastAPI()

    @app.get("/client")
    def client(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    return app


def _client_seen(trusted: str) -> tuple[str, str]:
    """The address the API sees for a request from loopback naming 203.0.113.7, and for
    one naming nobody."""
    app = _echo()
    settings = Settings(api_host="127.0.0.1", api_port=free_port(), api_trusted_proxies=trusted)
    with serve(app, api_server_config(settings, app)) as url:
        named = httpx.get(f"{url}/client", headers={"X-Forwarded-For": "203.0.113.7"})
        plain = httpx.get(f"{url}/client")
    return named.json(), plain.json()


def test_a_proxy_on_loopback_is_believed_by_default() -> None:
    assert _client_seen(Settings().api_trusted_proxies) == ("203.0.113.7", "127.0.0.1")


def test_a_client_that_is_not_a_named_proxy_cannot_name_its_address() -> None:
    assert _client_seen("10.20.5.2") == ("127.0.0.1", "127.0.0.1")
    assert _client_seen("") == ("127.0.0.1", "127.0.0.1")


def test_a_named_proxy_network_is_believed() -> None:
    assert _client_seen("10.20.5.2, 127.0.0.0/8")[0] == "203.0.113.7"


@pytest.mark.parametrize("value", ["*", "proxy.example", "10.0.0.300"])
def test_anything_but_addresses_and_networks_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="not an address or CIDR"):
        Settings(api_trusted_proxies=value)
