"""The SSRF guard's address rules beyond the plain private ranges: IPv6 forms that carry an
IPv4 address (NAT64, 6to4, IPv4-compatible and IPv4-mapped) are judged by the IPv4 address they
carry, deprecated site-local addresses are private, and a name's addresses are kept and tried in
the resolver's order (not sorted as text)."""

from __future__ import annotations

from typing import Any

import pytest
from tieline.services.webhooks.ssrf import Policy, UrlRefused, check_address, check_url


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", "private"),  # NAT64 of 127.0.0.1: leaves the host, not loopback
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of the cloud metadata address
        ("64:ff9b:1::a00:1", "private"),  # the local-use NAT64 prefix (RFC 8215)
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2002:7f00:1::1", "private"),  # 6to4 of 127.0.0.1
        ("::10.0.0.1", "private"),  # IPv4-compatible (deprecated)
        ("::127.0.0.1", "private"),  # IPv4-compatible of loopback: not native loopback
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the host itself
        ("192.0.0.9", "private"),  # IETF protocol assignments (3.11.7 calls it global)
        ("192.0.0.170", "private"),
        ("192.88.99.1", "private"),  # the deprecated 6to4 relay anycast
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
        ("fec0::1", "site-local"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
    ],
)
def test_addresses_that_embed_or_are_private_are_refused(address: str, why: str) -> None:
    with pytest.raises(UrlRefused, match=why):
        check_address(address, Policy())


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)
def test_public_addresses_and_their_nat64_and_6to4_forms_are_allowed(address: str) -> None:
    check_address(address, Policy())  # raises UrlRefused when refused


def test_only_native_and_mapped_loopback_count_as_loopback_for_the_policy() -> None:
    """Loopback receivers allowed (development) reach the host itself: ``::1``, 127/8 and
    ``::ffff:127.x``; the NAT64 or 6to4 form of 127.0.0.1 goes through a gateway."""
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        check_address(address, Policy(allow_loopback=True))
    for address in ("64:ff9b::7f00:1", "2002:7f00:1::1", "::127.0.0.1"):
        with pytest.raises(UrlRefused, match="private"):
            check_address(address, Policy(allow_loopback=True))
    check_address("64:ff9b::7f00:1", Policy(allow_private=True))
    check_address("2002:a00:1::1", Policy(allow_private=True))


async def test_a_name_the_resolver_cannot_encode_does_not_resolve() -> None:
    """The system resolver raises UnicodeError (not OSError) for a label IDNA cannot encode
    (longer than 63 characters, say): refused as not resolving, not a server error."""
    from tieline.services.webhooks.ssrf import system_resolver

    with pytest.raises(UrlRefused, match="does not resolve"):
        await check_url("https://" + "a" * 64 + ".example.org/", Policy(), system_resolver)


@pytest.mark.parametrize(
    ("url", "asked"),
    [
        ("https://bücher.example/in", "xn--bcher-kva.example"),
        ("https://BÜCHER.Example./in", "xn--bcher-kva.example"),  # UTS 46 maps case
        ("https://faß.de/in", "xn--fa-hia.de"),  # IDNA 2003 would ask for fass.de
        ("https://xn--bcher-kva.example/in", "xn--bcher-kva.example"),
        ("https://Hooks.Example.ORG/in", "hooks.example.org"),
        ("https://my_host.example.org/in", "my_host.example.org"),  # ASCII left alone
        ("https://bücher.example\u3002/in", "xn--bcher-kva.example"),  # ideographic stop
    ],
)
async def test_hosts_are_resolved_and_sent_by_their_a_labels(url: str, asked: str) -> None:
    seen: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        seen.append(host)
        return ["93.184.216.34"]

    t = await check_url(url, Policy(), resolve)
    assert seen == [asked] and t.host == asked


@pytest.mark.parametrize("host", ["☃.net", "exa\u200dmple.com", "-bad.ünï.example"])
async def test_a_name_that_is_no_valid_idn_is_refused_before_resolving(host: str) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("not to be resolved")

    with pytest.raises(UrlRefused, match="not a valid domain name"):
        await check_url(f"https://{host}/in", Policy(), resolve)


async def test_addresses_are_kept_in_the_resolvers_order() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        del host, port
        return ["93.184.216.34", "2606:4700::1111", "104.16.0.1", "93.184.216.34"]

    t = await check_url("https://hooks.example.org/in", Policy(), resolve)
    assert t.addresses == ("93.184.216.34", "2606:4700::1111", "104.16.0.1")
    assert t.address == "93.184.216.34" and t.url == "https://93.184.216.34/in"
    assert t.url_for("2606:4700::1111") == "https://[2606:4700::1111]/in"


async def test_the_system_resolver_keeps_getaddrinfo_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getaddrinfo orders addresses by preference (RFC 6724); sorting them as text would put
    "10.0.0.9" before "9.9.9.9" and IPv6 after IPv4 for no reason."""
    import asyncio
    import socket

    from tieline.services.webhooks.ssrf import system_resolver

    order = ["9.9.9.9", "2620:fe::fe", "10.0.0.9", "9.9.9.9"]

    async def getaddrinfo(host: str, port: int, **kw: object) -> list[tuple[object, ...]]:
        del host, kw
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in order]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert await system_resolver("hooks.example.org", 443) == ["9.9.9.9", "2620:fe::fe", "10.0.0.9"]


async def test_a_resolver_that_cannot_answer_now_is_our_trouble_not_the_receivers() -> None:
    """EAI_AGAIN (what a hung lookup ends with) is refused as temporary, so the attempt does
    not count towards disabling the endpoint; a name that does not exist is the receiver's."""
    import socket

    def failing(errno: int) -> Any:
        async def resolve(host: str, port: int) -> list[str]:
            raise socket.gaierror(errno, "resolver says no")

        return resolve

    policy = Policy()
    with pytest.raises(UrlRefused, match="does not resolve") as again:
        await check_url("https://hooks.example.com/x", policy, failing(socket.EAI_AGAIN))
    assert again.value.temporary
    with pytest.raises(UrlRefused, match="does not resolve") as missing:
        await check_url("https://hooks.example.com/x", policy, failing(socket.EAI_NONAME))
    assert not missing.value.temporary


def test_address_families_alternate_from_the_resolvers_first() -> None:
    """RFC 8305 section 4: a broken IPv6 path costs one wait before IPv4 is tried, not one
    per IPv6 address; each family keeps the resolver's order."""
    from tieline.services.webhooks.sender import interleaved

    six = ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
    four = ["192.0.2.1", "192.0.2.2"]
    assert interleaved([*six, *four]) == [
        "2001:db8::1",
        "192.0.2.1",
        "2001:db8::2",
        "192.0.2.2",
        "2001:db8::3",
    ]
    assert interleaved([*four, *six])[:3] == ["192.0.2.1", "2001:db8::1", "192.0.2.2"]
    assert interleaved(four) == four and interleaved([]) == []


def test_each_address_but_the_last_gets_a_share_of_the_time_left() -> None:
    from tieline.services.webhooks.sender import NEXT_ADDRESS_AFTER_S, connect_budget

    assert connect_budget(15.0, 2) == NEXT_ADDRESS_AFTER_S  # a few addresses: 3 s each
    assert connect_budget(15.0, 9) == 15.0 / 10  # many: a share, the last counted twice
    assert connect_budget(4.2, 1) == 4.2  # the last has all that is left


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://hooks.example.org/in", "hooks.example.org"),
        ("https://hooks.example.org:443/in", "hooks.example.org"),  # the default port
        ("https://hooks.example.org:8443/in", "hooks.example.org:8443"),
        ("http://hooks.example.org:80/in", "hooks.example.org"),
        ("https://[2606:4700::1111]/in", "[2606:4700::1111]"),  # brackets (RFC 9110)
        ("https://[2606:4700::1111]:8443/in", "[2606:4700::1111]:8443"),
        ("https://93.184.216.34:8443/in", "93.184.216.34:8443"),
    ],
)
async def test_the_host_header_names_the_checked_host_and_a_port_only_when_not_default(
    url: str, host: str
) -> None:
    from tieline.services.webhooks.sender import host_header

    async def resolve(name: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # loopback allowed below: plain http too

    assert host_header(await check_url(url, Policy(allow_loopback=True), resolve)) == host
