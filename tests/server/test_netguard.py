"""SSRF rules (server/netguard.py): the URL parser, address spellings, the rule table, the allowlist and
the one-lookup resolution. Nothing here opens a socket; resolvers are injected."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionrag.server.errors import ImageFetchError, InvalidInput
from visionrag.server.netguard import (
    NetGuard,
    Refused,
    embedded_ipv4,
    parse_ipv4,
    parse_url,
    refusal,
    shorten,
)


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    """A getaddrinfo stand-in answering from `table` (name -> addresses)."""

    def resolve(host, port, *args, **kwargs):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in table[host]:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, port, 0, 0) if family == socket.AF_INET6 else (addr, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return resolve


# ---- numeric spellings ------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "0177.0000.0000.0001",
    "127.1",
    "127.0.1",
    "0x7f.1",
    "017700000001",
]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_every_ipv4_spelling_of_loopback_reads_as_127_0_0_1(spelling):
    assert parse_ipv4(spelling) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "text", ["", "a.b.c.d", "1.2.3.4.5", "256.0.0.1", "08.0.0.1", "1.2.3.256", "1..2", "4294967296"]
)
def test_non_addresses_are_not_read_as_ipv4(text):
    assert parse_ipv4(text) is None


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_decimal_hex_and_octal_spellings_agree(number):
    ip = ipaddress.IPv4Address(number)
    a, b, c, d = ip.packed
    for spelling in (
        str(number),
        hex(number),
        f"0{number:o}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        ".".join(f"0{octet:o}" for octet in ip.packed),
        ".".join(hex(octet) for octet in ip.packed),
    ):
        assert parse_ipv4(spelling) == ip, spelling


# ---- the rule table ---------------------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.0.0.1": "private address (RFC 1918)",
    "172.16.5.4": "private address (RFC 1918)",
    "192.168.1.1": "private address (RFC 1918)",
    "169.254.169.254": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.255": "carrier-grade NAT",
    "0.0.0.0": "unspecified",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.10": "documentation",
    "198.18.0.1": "benchmarking",
    "::": "unspecified",
    "::1": "loopback",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fe80::1": "link-local",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:7f00:1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "::ffff:10.0.0.1": "RFC 1918",
    "::127.0.0.1": "IPv4-compatible IPv6 form of 127.0.0.1",
    "64:ff9b::7f00:1": "NAT64 IPv6 form of 127.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 IPv6 form of 169.254.169.254",
    "2002:7f00:1::": "6to4 IPv6 form of 127.0.0.1",
    "2002:a00:1::1": "6to4 IPv6 form of 10.0.0.1",
    "2001::1": "Teredo",
    "2001:db8::1": "documentation",
    "64:ff9b:1::1": "local-use NAT64",
}


@pytest.mark.parametrize(("address", "rule"), sorted(REFUSED.items()))
def test_refused_ranges_name_their_rule(address, rule):
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and rule in why


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_ipv6_forms_are_judged_by_the_ipv4_they_carry(number):
    v4 = ipaddress.IPv4Address(number)
    refused = refusal(v4) is not None
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | number)
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (number << 80))
    for form in (mapped, nat64, six_to_four):
        assert embedded_ipv4(form)[0] == v4
        assert (refusal(form) is not None) == refused, form
    if number > 1:
        assert (refusal(ipaddress.IPv6Address(number)) is not None) == refused


# ---- the URL parser ---------------------------------------------------------------------------------


def test_parse_url_builds_target_and_host_header():
    p = parse_url("HTTP://Images.Example.COM.:8080/a b/c.png?x=1&y=ü#frag")
    assert (p.scheme, p.host, p.port) == ("http", "images.example.com", 8080)
    assert p.host_header == "images.example.com:8080"
    assert p.target == "/a%20b/c.png?x=1&y=%C3%BC"
    assert p.ip is None
    q = parse_url("https://[::FFFF:127.0.0.1]/")
    assert (q.host, q.port, q.host_header, q.target) == ("::ffff:7f00:1", 443, "[::ffff:7f00:1]", "/")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///etc/passwd", "'file'"),
        ("ftp://example.com/x.png", "'ftp'"),
        ("gopher://example.com:70/_x", "'gopher'"),
        ("javascript:alert(1)", "'javascript'"),
        ("example.com/x.png", "(none)"),
        ("http://user:secret@example.com/x.png", "credentials"),
        ("http://127.0.0.1\\@example.com/", "credentials"),
        ("http://example.com\\.evil/", "malformed host"),
        ("http:///x.png", "malformed host"),
        ("http://[::1/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "malformed host"),
        ("http://[1:2:3:4:5:6:7:8:9]/", "not a valid URL"),
        ("http://example.com:99999/", "outside 1-65535"),
        ("http://example.com:0/", "outside 1-65535"),
        ("http://1.2.3.4.5/", "malformed IPv4"),
        ("http://08.0.0.1/", "malformed IPv4"),
        ("http://a..b/", "malformed host name"),
        ("http://exa\nmple.com/", "control characters"),
        ("http://xn--d1acufc.xn--p1ai\u0000/", "control characters"),
        ("http://пример.рф/", "malformed host"),
    ],
)
def test_parse_url_refuses_what_it_cannot_fetch_safely(url, words):
    with pytest.raises(InvalidInput) as err:
        parse_url(url)
    assert words in err.value.detail
    assert "secret" not in err.value.detail


def test_shorten_hides_payloads_and_passwords():
    assert shorten("data:image/png;base64," + "A" * 10_000) == "data:image/png"
    assert shorten("http://u:pw@h/x") == "http://***@h/x"
    assert len(shorten("http://h/" + "a" * 1000)) == 200


# ---- NetGuard.check ---------------------------------------------------------------------------------


def test_message_names_url_rule_and_setting():
    with pytest.raises(Refused) as err:
        NetGuard().check("http://10.0.0.1/x.png")
    assert err.value.status_code == 422
    assert err.value.detail == (
        "image_url http://10.0.0.1/x.png was refused: 10.0.0.1 is a private address (RFC 1918); "
        "set VISIONRAG_ALLOW_PRIVATE_HOSTS to allow it"
    )


def test_numeric_hosts_never_reach_the_resolver():
    calls: list[str] = []
    guard = NetGuard(resolve=fake_resolver({}, calls))
    for spelling in LOOPBACK_SPELLINGS:
        with pytest.raises(Refused, match="loopback"):
            guard.check(f"http://{spelling}/")
    target = guard.check("http://0x08080808/")
    assert target.addresses == (ipaddress.IPv4Address("8.8.8.8"),)
    assert calls == []


def test_every_resolved_address_is_checked():
    resolve = fake_resolver(
        {
            "mixed.test": ["93.184.216.34", "10.1.2.3"],
            "mapped.test": ["::ffff:169.254.169.254"],
            "public.test": ["93.184.216.34", "2606:4700::1", "93.184.216.34"],
        }
    )
    guard = NetGuard(resolve=resolve)
    with pytest.raises(Refused, match=r"mixed\.test resolves to 10\.1\.2\.3, a private address"):
        guard.check("http://mixed.test/x.png")
    with pytest.raises(Refused, match=r"169\.254\.169\.254, a link-local"):
        guard.check("https://mapped.test/")
    target = guard.check("https://public.test/x.png")
    assert [str(a) for a in target.addresses] == ["93.184.216.34", "2606:4700::1"]
    assert target.url.host_header == "public.test"


def test_allowlist_ip_cidr_and_name():
    resolve = fake_resolver(
        {
            "cam.internal": ["10.9.8.7"],
            "other.internal": ["10.9.8.7"],
            "x.test": ["10.0.0.5"],
            "localhost": ["127.0.0.1"],
        }
    )
    guard = NetGuard(["127.0.0.1", "10.0.0.0/24", "Cam.Internal.", "[::1]"], resolve=resolve)
    assert guard.check("http://127.0.0.1:9/").addresses == (ipaddress.ip_address("127.0.0.1"),)
    assert guard.check("http://2130706433:9/").addresses == (ipaddress.ip_address("127.0.0.1"),)
    assert guard.check("http://[::ffff:127.0.0.1]/").addresses == (ipaddress.ip_address("127.0.0.1"),)
    assert guard.check("http://[::1]/").addresses == (ipaddress.ip_address("::1"),)
    assert guard.check("http://10.0.0.200/")
    assert guard.check("http://x.test/").addresses == (ipaddress.ip_address("10.0.0.5"),)
    assert guard.check("http://cam.internal/").addresses == (ipaddress.ip_address("10.9.8.7"),)
    with pytest.raises(Refused):  # the same address under a name that is not listed
        guard.check("http://other.internal/")
    assert guard.check("http://localhost/").addresses == (ipaddress.ip_address("127.0.0.1"),)
    for refused in ("http://127.0.0.2/", "http://10.0.1.1/", "http://[::2]/"):
        with pytest.raises(Refused):
            guard.check(refused)


def test_resolution_failures_are_fetch_errors():
    guard = NetGuard(resolve=fake_resolver({"empty.test": []}))
    with pytest.raises(ImageFetchError, match=r"nowhere\.test did not resolve"):
        guard.check("http://nowhere.test/x.png")
    with pytest.raises(ImageFetchError, match="resolved to no address"):
        guard.check("http://empty.test/x.png")


def test_a_hanging_resolver_is_bounded_by_the_timeout():
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(10)
        return []

    start = time.monotonic()
    try:
        with pytest.raises(ImageFetchError, match=r"resolving slow\.test timed out"):
            NetGuard(resolve=hang).check("http://slow.test/", timeout=0.2)
    finally:
        release.set()
    assert time.monotonic() - start < 2


URL_PIECES = st.sampled_from(
    ["http://", "https://", "HTTP://", "data:", "file:", "[", "]", "::", ":", "@", "%", "\\", "/", "?", "#", ".",
     "127", "0x7f", "0177", "1", "ffff", "localhost", "a.test", "xn--", "\ud800", "\x00", " ", "\u00e9", "99999"]
)  # fmt: skip


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(st.text(max_size=60), st.lists(URL_PIECES, max_size=12).map("".join)))
def test_check_answers_any_string_with_a_4xx_never_a_crash(url):
    guard = NetGuard(["a.test"], resolve=fake_resolver({"a.test": ["127.0.0.1"], "localhost": ["127.0.0.1"]}))
    try:
        target = guard.check(url, timeout=1)
    except (InvalidInput, ImageFetchError) as exc:
        assert 400 <= exc.status_code < 500
    else:
        assert target.url.scheme in ("http", "https") and target.addresses
        assert all(0x20 < ord(c) < 0x7F for c in target.url.target + target.url.host_header)
