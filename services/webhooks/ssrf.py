"""Where a webhook may be sent (server-side request forgery guard).

A receiver URL must be ``https``, or plain ``http`` to a loopback address when loopback
receivers are allowed (development). Its host is resolved and *every* address checked: a name
that resolves to any address outside the public internet (private ranges, link-local and the
cloud metadata address, loopback, carrier-grade NAT, multicast, reserved, unspecified, the
deprecated IPv6 site-local ``fec0::/10``) is refused unless private targets are allowed (or, for
loopback, loopback receivers). An IPv6 address that carries an IPv4 address (IPv4-mapped
``::ffff:0:0/96``, IPv4-compatible ``::/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is
judged by the IPv4 address it carries: ``64:ff9b::a00:1`` reaches 10.0.0.1 through a NAT64
gateway, so it is as private as 10.0.0.1, while the NAT64 form of a public address (what DNS64
answers on an IPv6-only network) is public. The local-use NAT64 prefix ``64:ff9b:1::/48`` is
private whatever it carries. Only ``::1``, 127.0.0.0/8 and its IPv4-mapped form are loopback:
a NAT64, 6to4 or IPv4-compatible form of 127.x is private (it leaves the host). 192.0.0.0/24
and 192.88.99.0/24 are refused as private whatever the Python version calls them. A name that
cannot even be encoded for the resolver does not resolve (refused, not an error).

The request then goes to the addresses that were checked, never to a fresh lookup (a DNS answer
that changes between check and connect, "DNS rebinding", gains nothing), in the resolver's
order (getaddrinfo's preference, RFC 6724), the next one when one refuses the connection;
with the original host name in the ``Host`` header and for TLS (SNI and certificate check).
Redirects are never followed (services/webhooks/sender.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import idna

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves (host, port) to its addresses (the default asks the system resolver).
Resolver = Callable[[str, int], Awaitable[list[str]]]


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why. ``temporary``: the resolver
    could not answer now (EAI_AGAIN), our trouble rather than the receiver's."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class Policy:
    """What the installation allows beyond public https receivers."""

    allow_loopback: bool = False
    allow_private: bool = False


@dataclass(frozen=True)
class Target:
    """A checked URL: the addresses to connect to, in order, and what to tell the server."""

    host: str  # the original host name (Host header, TLS server name)
    addresses: tuple[str, ...]  # checked, in the resolver's order
    template: tuple[str, int | None, str, str]  # scheme, port, path, query of the URL

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def url(self) -> str:
        """The URL with the first address in place of the host name."""
        return self.url_for(self.address)

    def url_for(self, address: str) -> str:
        """The URL with ``address`` (one of :attr:`addresses`) in place of the host name."""
        scheme, port, path, query = self.template
        netloc = f"[{address}]" if ":" in address else address
        if port is not None:
            netloc += f":{port}"
        return urlunsplit((scheme, netloc, path, query, ""))


def addresses_of(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    """The addresses of getaddrinfo's answer in its order (its preference), each once."""
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return addresses_of(infos)


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: Special-purpose IPv4 blocks refused whatever ``ipaddress`` calls them (3.11.7 calls parts
#: of them global): the IETF protocol assignments and the deprecated 6to4 relay anycast.
REFUSED_V4 = (ipaddress.IPv4Network("192.0.0.0/24"), ipaddress.IPv4Network("192.88.99.0/24"))


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches (mapped, compatible, NAT64,
    6to4), or None. ``::`` and ``::1`` are themselves, not compatible forms of 0.0.0.0/0.0.0.1."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in NAT64 or (addr in IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _kind(addr: Address) -> str | None:
    """Why an address is not a public internet address, or None when it is. Only the native
    loopback forms (``::1``, 127.0.0.0/8 and its IPv4-mapped ``::ffff:127.x``, which the host
    itself answers) are "loopback"; an IPv4-compatible, NAT64 or 6to4 form of 127.x goes
    through a gateway or tunnel, so it is "private", not something a loopback-only
    development setting allows."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None:
            kind = _kind(inner)
            if kind == "loopback" and addr.ipv4_mapped is None:
                return "private"
            return kind
        if addr in NAT64_LOCAL:
            return "private"
        if addr.is_site_local:
            return "site-local"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if isinstance(addr, ipaddress.IPv4Address) and any(addr in n for n in REFUSED_V4):
        return "private"
    if addr.is_global and not addr.is_reserved:
        return None
    return "private"


def check_address(address: str, policy: Policy) -> None:
    """Refuse an address the policy does not allow (UrlRefused)."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])
    kind = _kind(addr)
    if kind is None:
        return
    if kind == "loopback" and (policy.allow_loopback or policy.allow_private):
        return
    if kind in ("private", "site-local") and policy.allow_private:
        return
    raise UrlRefused(
        f"url: resolves to {address}, a {kind} address, which may not receive webhooks"
    )


def a_label(host: str) -> str:
    """An internationalized host name as the DNS and the receiver know it: its A-labels
    (``bücher.example`` -> ``xn--bcher-kva.example``), by IDNA 2008 with the UTS #46 mapping,
    as browsers and httpx encode it. Left to Python, ``getaddrinfo`` would encode it by
    IDNA 2003, which maps some names onto *other* domains (``faß.de`` -> ``fass.de``), and
    the Host header and TLS name would carry the raw text, which HTTP cannot. ASCII names are
    only lower-cased (IDNA 2008 refuses the underscores some of them have)."""
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UrlRefused(f"url: host {host!r} is not a valid domain name ({exc})") from exc


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
    # after the A-labels: UTS 46 maps other full stops ("。") to "." first
    host = a_label(parts.hostname or "").rstrip(".")
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
        except (OSError, UnicodeError) as exc:  # UnicodeError: a label IDNA cannot encode
            temporary = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
            raise UrlRefused(
                f"url: host {host!r} does not resolve ({exc})", temporary=temporary
            ) from exc
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        raise UrlRefused(f"url: host {host!r} has no address")
    for address in addresses:
        check_address(address, policy)
        if scheme == "http" and _kind(ipaddress.ip_address(address.split("%", 1)[0])) != "loopback":
            raise UrlRefused("url: plain http is allowed only to loopback receivers")
    parts = urlsplit(url)
    return Target(host, tuple(addresses), (scheme, parts.port, parts.path or "/", parts.query))
