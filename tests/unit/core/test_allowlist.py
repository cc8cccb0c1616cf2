"""GATEWAY_ALLOWED_AETS: both spellings, the old plain list, and why a peer is refused."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from gateway.config import Settings
from gateway.core.allowlist import parse_allowed_aets, refusal

SITE = "CT1=10.0.0.5, MR1=10.0.1.0/24|10.0.2.7 ,WS1,V6=fd00::/64"


def test_the_list_syntax_maps_each_ae_to_its_networks() -> None:
    assert parse_allowed_aets(SITE) == {
        "CT1": (ip_network("10.0.0.5/32"),),
        "MR1": (ip_network("10.0.1.0/24"), ip_network("10.0.2.7/32")),
        "WS1": (),
        "V6": (ip_network("fd00::/64"),),
    }


def test_a_json_object_says_the_same() -> None:
    text = '{"CT1": ["10.0.0.5"], "MR1": "10.0.1.0/24|10.0.2.7", "WS1": [], "V6": ["fd00::/64"]}'
    assert parse_allowed_aets(text) == parse_allowed_aets(SITE)


def test_the_old_plain_list_allows_those_aes_from_anywhere() -> None:
    allowed = Settings(allowed_aets="CT01, DX01 ,").allowed_aets
    assert allowed == {"CT01": (), "DX01": ()}
    assert refusal(allowed, "CT01", "192.0.2.1") is None


@pytest.mark.parametrize(
    ("aet", "address", "why"),
    [
        ("CT1", "10.0.0.5", None),
        ("CT1", "127.0.0.2", "calling AE CT1 from 127.0.0.2 is not allowed: CT1 may come from 10.0.0.5"),
        ("MR1", "10.0.1.200", None),
        ("MR1", "::ffff:10.0.2.7", None),  # IPv4 peer on an IPv6 socket
        ("MR1", "10.0.2.8", "calling AE MR1 from 10.0.2.8 is not allowed: MR1 may come from 10.0.1.0/24, 10.0.2.7"),
        ("WS1", "198.51.100.9", None),
        ("V6", "fd00::1", None),
        ("V6", "10.0.0.5", "calling AE V6 from 10.0.0.5 is not allowed: V6 may come from fd00::/64"),
        ("CT9", "10.0.0.5", "calling AE CT9 from 10.0.0.5 is not allowed: CT9 is not in GATEWAY_ALLOWED_AETS"),
    ],
)  # fmt: skip
def test_refusal_says_why(aet: str, address: str, why: str | None) -> None:
    assert refusal(parse_allowed_aets(SITE), aet, address) == why


def test_a_title_with_control_characters_is_logged_quoted() -> None:
    why = refusal(parse_allowed_aets(SITE), "X\nFAKE LINE", "10.0.0.5")
    assert why is not None and "\n" not in why
    assert why.startswith("calling AE 'X\\nFAKE LINE' from 10.0.0.5 is not allowed")


def test_an_empty_list_lets_every_ae_in() -> None:
    assert parse_allowed_aets("") == {}
    assert refusal({}, "ANYONE", "192.0.2.1") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CT1=10.0.0.300", "CT1 may come from '10.0.0.300', which is not an IP address"),
        ("CT1=pacs.example.org", "which is not an IP address or network"),
        ("CT1=10.0.0.5/24", "has host bits set"),
        ("A_TITLE_THAT_IS_TOO_LONG=10.0.0.5", "is not an AE title"),
        ('{"CT1": 5}', "CT1 needs a list of addresses or CIDRs"),
        ('{"CT1": ["10.0.0.5", "nowhere"]}', "'nowhere', which is not an IP address"),
    ],
)
def test_a_malformed_entry_is_refused_with_its_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(allowed_aets=text)
