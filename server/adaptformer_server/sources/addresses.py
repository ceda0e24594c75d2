"""Where http(s) sources may connect. A host name is resolved here, once per hop; every address it resolves to is
checked, and the fetch connects to a checked address, so that a name resolving anew to another one (DNS rebinding)
cannot move the connection.

Refused, unless the operator allows them (``allow_private_sources``): loopback, link-local (169.254.0.0/16 and
fe80::/10, where cloud metadata services answer), private (RFC 1918, fc00::/7), unspecified, multicast and reserved
addresses, including those an IPv6 address carries (IPv4-mapped, 6to4, NAT64).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

from adaptformer_server.errors import Forbidden
from adaptformer_server.sources.errors import SourceUnavailable

__all__ = ["IPAddress", "checked", "refusal", "resolve"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address: itself), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def refusal(address: IPAddress) -> str | None:
    """The kind of a non-public address (``"loopback"``, ``"private"``...), or None for a public one."""
    for candidate in (*_carried(address), address):
        if candidate.is_loopback:
            return "loopback"
        if candidate.is_link_local:
            return "link-local"
        if candidate.is_unspecified:
            return "unspecified"
        if candidate.is_multicast:
            return "multicast"
        if candidate.is_reserved:
            return "reserved"
        if candidate.is_private:
            return "private"
        if not candidate.is_global:  # shared (100.64.0.0/10) and other special-purpose ranges
            return "reserved"
    return None


def _carried(address: IPAddress) -> Iterator[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            yield address.ipv4_mapped
        if address.sixtofour is not None:
            yield address.sixtofour
        if address in _NAT64:
            yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


async def checked(host: str, port: int, allow_private: bool, shown: str) -> list[IPAddress]:
    """The addresses of ``host`` a fetch may connect to: every one it resolves to, each checked.

    Args:
        host: An ASCII host name or a literal address.
        port: The port the fetch connects to.
        allow_private: The operator's ``allow_private_sources``: no address is refused.
        shown: The source as messages show it.

    Raises:
        SourceUnavailable: the name does not resolve (502).
        Forbidden: an address is not public and the operator has not allowed such addresses (403).
    """
    try:
        found = await resolve(host, port)
    except (OSError, UnicodeError, ValueError) as e:  # socket.gaierror is an OSError
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SourceUnavailable(f"cannot fetch {shown}: {host} does not resolve ({detail})"[:500]) from None
    if not found:
        raise SourceUnavailable(f"cannot fetch {shown}: {host} resolves to no address")
    if allow_private:
        return found
    for address in found:
        kind = refusal(address)
        if kind is not None:
            where = f"{host} is" if str(address) == host else f"{host} resolves to {address},"
            raise Forbidden(
                f"{shown}: {where} a {kind} address; this server fetches http(s) sources from public addresses "
                "only (an operator allows others with ADAPTFORMER_ALLOW_PRIVATE_SOURCES=true)"
            )
    return found
