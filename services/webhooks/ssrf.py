"""Where a webhook may be sent (server-side request forgery guard).

A receiver URL must be ``https``, or plain ``http`` to a loopback address when loopback
receivers are allowed (development). Its host is resolved and *every* address checked: a name
that resolves to any address outside the public internet (private ranges, link-local and the
cloud metadata address, loopback, carrier-grade NAT, multicast, reserved, unspecified, and
IPv4 inside IPv6) is refused unless private targets are allowed (or, for loopback, loopback
receivers). The request then goes to the address that was checked, never to a fresh lookup
(a DNS answer that changes between check and connect, "DNS rebinding", gains nothing), with
the original host name in the ``Host`` header and for TLS (SNI and certificate check).
Redirects are never followed (services/webhooks/sender.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves (host, port) to its addresses (the default asks the system resolver).
Resolver = Callable[[str, int], Awaitable[list[str]]]


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why."""


@dataclass(frozen=True)
class Policy:
    """What the installation allows beyond public https receivers."""

    allow_loopback: bool = False
    allow_private: bool = False


@dataclass(frozen=True)
class Target:
    """A checked URL: the address to connect to and what to tell the server."""

    url: str  # the URL with the checked address in place of the host name
    host: str  # the original host name (Host header, TLS server name)
    address: str


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def _kind(addr: Address) -> str | None:
    """Why an address is not a public internet address, or None when it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return _kind(addr.ipv4_mapped)
    if addr.is_loopback:
        return "loopback"
    if addr.is_global and not addr.is_multicast:
        return None
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    return "private"


def check_address(address: str, policy: Policy) -> None:
    """Refuse an address the policy does not allow (UrlRefused)."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])
    kind = _kind(addr)
    if kind is None:
        return
    if kind == "loopback" and (policy.allow_loopback or policy.allow_private):
        return
    if kind == "private" and policy.allow_private:
        return
    raise UrlRefused(
        f"url: resolves to {address}, a {kind} address, which may not receive webhooks"
    )


def check_syntax(url: str, policy: Policy) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL that may receive webhooks, judged on its text alone."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused("url: must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("url: must not carry credentials")
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"url: {exc}") from exc
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("url: has no host")
    if scheme == "http" and not policy.allow_loopback:
        raise UrlRefused("url: must be an https URL (plain http only to loopback, when allowed)")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def check_url(url: str, policy: Policy, resolve: Resolver = system_resolver) -> Target:
    """The URL checked against ``policy`` with its host resolved (UrlRefused when refused)."""
    scheme, host, port = check_syntax(url, policy)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise UrlRefused(f"url: host {host!r} does not resolve ({exc})") from exc
    if not addresses:
        raise UrlRefused(f"url: host {host!r} has no address")
    for address in addresses:
        check_address(address, policy)
        if scheme == "http" and _kind(ipaddress.ip_address(address.split("%", 1)[0])) != "loopback":
            raise UrlRefused("url: plain http is allowed only to loopback receivers")
    chosen = addresses[0]
    netloc = f"[{chosen}]" if ":" in chosen else chosen
    parts = urlsplit(url)
    if parts.port is not None:
        netloc += f":{parts.port}"
    return Target(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), host, chosen)
