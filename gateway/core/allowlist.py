"""Which calling AE titles may associate, and from which addresses (``GATEWAY_ALLOWED_AETS``).

Like Orthanc's ``DicomCheckModalityHost``: each calling AE title maps to the hosts or
networks it may come from. Two spellings are accepted:

* ``CT1=10.0.0.5,MR1=10.0.1.0/24|10.0.2.7,WS1`` — comma-separated entries, each an AE
  title, optionally ``=`` and ``|``-separated addresses or CIDRs. ``WS1`` alone may come
  from anywhere, so the older plain list ``CT1,MR1`` keeps its meaning.
* a JSON object, ``{"CT1": ["10.0.0.5"], "MR1": "10.0.1.0/24|10.0.2.7", "WS1": []}``.

An empty list allows every AE from anywhere. Addresses are IP addresses or networks
(:mod:`ipaddress`), never host names: a name would be resolved once, at start, and
silently go stale.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Calling AE title -> the networks it may come from (empty: from anywhere).
AllowedAets = dict[str, tuple[Network, ...]]


def parse_allowed_aets(value: object) -> AllowedAets:
    """``GATEWAY_ALLOWED_AETS`` in either spelling (or already a mapping or list).

    Raises
    ------
    ValueError
        An entry that is not an AE title, or an address that is not an IP address or
        network; the message names the entry.
    """
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("{") else _split_entries(text)
    if isinstance(value, list | tuple):
        value = {str(aet): () for aet in value}
    if not isinstance(value, Mapping):
        raise ValueError("GATEWAY_ALLOWED_AETS is AET=address|cidr,AET or a JSON object")
    allowed: AllowedAets = {}
    for aet, addresses in value.items():
        title = str(aet).strip()
        if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title:
            raise ValueError(f"GATEWAY_ALLOWED_AETS: {title!r} is not an AE title")
        if isinstance(addresses, str):
            addresses = addresses.split("|")
        if not isinstance(addresses, list | tuple):
            raise ValueError(f"GATEWAY_ALLOWED_AETS: {title} needs a list of addresses or CIDRs")
        allowed[title] = tuple(_network(title, str(a)) for a in addresses if str(a).strip())
    return allowed


def _split_entries(text: str) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for part in text.split(","):
        aet, _, addresses = part.partition("=")
        if aet.strip():
            entries[aet.strip()] = addresses.split("|") if addresses.strip() else []
    return entries


def _network(aet: str, text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise ValueError(
            f"GATEWAY_ALLOWED_AETS: {aet} may come from {text.strip()!r}, which is not an"
            f" IP address or network ({exc})"
        ) from None


def refusal(allowed: Mapping[str, tuple[Network, ...]], aet: str, address: str) -> str | None:
    """Why the calling AE ``aet`` from ``address`` may not associate, or None if it may.

    An IPv4 peer seen on an IPv6 socket (``::ffff:10.0.0.5``) is judged by its IPv4
    address.
    """
    if not allowed:
        return None
    shown = aet if aet.isprintable() else repr(aet)  # the peer chose it: no log injection
    if aet not in allowed:
        return (
            f"calling AE {shown} from {address} is not allowed: {shown} is not in"
            " GATEWAY_ALLOWED_AETS"
        )
    networks = allowed[aet]
    if not networks:
        return None
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        peer = None
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    if peer is not None and any(peer in network for network in networks):
        return None
    where = ", ".join(_shown(network) for network in networks)
    return f"calling AE {aet} from {address} is not allowed: {aet} may come from {where}"


def _shown(network: Network) -> str:
    """``10.0.0.5`` for a single host, ``10.0.1.0/24`` for a network."""
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)
