"""Which addresses an image URL may reach: the server's SSRF rules, in one place.

`server/fetch.py` asks `NetGuard.check(url)` and gets back a `Target`: the URL parsed once (the same parse
the fetcher then uses to build its request, so checker and fetcher can never disagree: vLLM
CVE-2025-6242 / CVE-2026-24779 / CVE-2026-25960) and the addresses the host resolved to, every one of
them checked. The fetcher connects to one of those addresses and never resolves the name again, so a
DNS answer that changes between check and connect (rebinding) cannot reach a refused address.

Numeric hosts are read the way inet_aton reads them (2130706433, 0x7f000001, 0177.0.0.1, 127.1), so
every spelling of a refused address is refused; IPv4-mapped, IPv4-compatible, NAT64 and 6to4 IPv6
addresses are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from visionrag.server.errors import ImageFetchError, InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

ALLOW_VARIABLE = "VISIONRAG_ALLOW_PRIVATE_HOSTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_URL_CHARS = 8192

_V4_RULES: list[tuple[str, str]] = [
    ("0.0.0.0/8", "an unspecified ('this network') address (RFC 1122)"),
    ("127.0.0.0/8", "a loopback address (RFC 1122)"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
    ("169.254.0.0/16", "a link-local address (RFC 3927; cloud metadata lives here)"),
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890)"),
    ("192.0.2.0/24", "a documentation address (RFC 5737)"),
    ("198.51.100.0/24", "a documentation address (RFC 5737)"),
    ("203.0.113.0/24", "a documentation address (RFC 5737)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("192.88.99.0/24", "a 6to4 relay anycast address (RFC 7526)"),
    ("224.0.0.0/4", "a multicast address (RFC 5771)"),
    ("240.0.0.0/4", "a reserved address (RFC 1112)"),
]
_V6_RULES: list[tuple[str, str]] = [
    ("::/128", "the unspecified address (RFC 4291)"),
    ("::1/128", "the loopback address (RFC 4291)"),
    ("64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("2001::/32", "a Teredo tunnel address (RFC 4380)"),
    ("2001:db8::/32", "a documentation address (RFC 3849)"),
    ("fc00::/7", "a private address (unique local, RFC 4193)"),
    ("fe80::/10", "a link-local address (RFC 4291)"),
    ("fec0::/10", "a site-local address (deprecated, RFC 3879)"),
    ("ff00::/8", "a multicast address (RFC 4291)"),
]
_V4_TABLE = [(ipaddress.IPv4Network(net), why) for net, why in _V4_RULES]
_V6_TABLE = [(ipaddress.IPv6Network(net), why) for net, why in _V6_RULES]
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPAT = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")

_AUTHORITY = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{0,5}))?")
_V4_PART = re.compile(r"0[xX][0-9A-Fa-f]*|0[0-7]*|[1-9][0-9]*")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_NUMERIC_LABEL = re.compile(r"0[xX][0-9A-Fa-f]*|[0-9]+")


class Refused(ImageFetchError):
    """A URL whose host is, or resolves to, an address the rules refuse."""


@dataclass(frozen=True)
class ParsedURL:
    """An http(s) URL parsed once; the fetcher builds its request from these fields only."""

    url: str  # as given
    scheme: str  # "http" or "https"
    host: str  # lower case, no brackets, no trailing dot
    port: int
    target: str  # request target: path and query, percent-encoded
    host_header: str  # value of the Host header (and the name TLS verifies, without the port)
    ip: IPAddress | None  # the address when the host is numeric


@dataclass(frozen=True)
class Target:
    """A URL that passed the rules, with the addresses (all checked) the fetcher may connect to."""

    url: ParsedURL
    addresses: tuple[IPAddress, ...]


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read `host` as inet_aton does (1-4 parts, decimal, 0x hex or 0 octal); None if it is not one."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.fullmatch(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2].lower() == "0x":
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            values.append(int(p[1:], 8))
        else:
            values.append(int(p))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4) and the form's name."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _COMPAT and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def unmap(ip: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d is a.b.c.d on a dual-stack socket: judge and connect to it as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def refusal(ip: IPAddress) -> str | None:
    """Why `ip` may not be reached (a phrase naming the rule), or None when it is a public address."""
    ip = unmap(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        for net, why in _V4_TABLE:
            if ip in net:
                return why
        return None if ip.is_global else "not a globally routable address"
    inner = embedded_ipv4(ip)
    if inner is not None:
        v4, form = inner
        why = refusal(v4)
        return None if why is None else f"the {form} IPv6 form of {v4}, {why}"
    for net, why in _V6_TABLE:
        if ip in net:
            return why
    if ip.is_reserved:
        return "a reserved address (RFC 4291)"
    return None if ip.is_global else "not a globally routable address"


def parse_url(url: str, label: str | None = None) -> ParsedURL:
    """Parse an http(s) URL strictly; InvalidInput says what is wrong. The only URL parser used."""
    shown = label or f"image_url {shorten(url)}"
    if len(url) > _MAX_URL_CHARS:
        raise InvalidInput(f"image_url is longer than {_MAX_URL_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidInput(f"{shown} contains control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidInput(f"{shown} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(
            f"{shown} has scheme {scheme or '(none)'!r}; only http, https and data URLs are accepted"
        )
    if "@" in parts.netloc:
        raise InvalidInput(f"{shown} carries credentials (user:password@); they are not accepted")
    m = _AUTHORITY.fullmatch(parts.netloc)
    if m is None:
        raise InvalidInput(f"{shown} has a malformed host {parts.netloc!r}")
    port = _DEFAULT_PORTS[scheme] if not m["port"] else int(m["port"])
    if not 1 <= port <= 65535:
        raise InvalidInput(f"{shown} has port {m['port']}, outside 1-65535")
    ip: IPAddress | None
    if m["v6"] is not None:
        try:
            ip = ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise InvalidInput(f"{shown} has a malformed IPv6 address [{m['v6']}]") from None
        host = str(ip)
        host_header = f"[{host}]"
    else:
        host = m["name"].lower()
        host = host[:-1] if host.endswith(".") else host
        labels = host.split(".")
        if not host or "" in labels or any(len(label) > 63 for label in labels) or len(host) > 253:
            raise InvalidInput(f"{shown} has a malformed host name {m['name']!r}")
        ip = parse_ipv4(host)
        if ip is None and _NUMERIC_LABEL.fullmatch(labels[-1]):
            # WHATWG: a host ending in a number is an IPv4 address or an error, never a name.
            raise InvalidInput(f"{shown} has a malformed IPv4 address {m['name']!r}")
        host_header = host
    if m["port"]:
        host_header = f"{host_header}:{port}"
    try:
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        query = quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    except UnicodeEncodeError:  # lone surrogates, which JSON allows
        raise InvalidInput(f"{shown} is not valid Unicode") from None
    target = f"{path}?{query}" if query else path
    return ParsedURL(url, scheme, host, port, target, host_header, ip)


class NetGuard:
    """Decides whether a URL may be fetched. `allow` holds IPs, CIDRs or host names that are exempt:
    a name matches the URL's host, an IP or CIDR matches the address the host resolved to."""

    def __init__(self, allow: Iterable[str] = (), resolve: Resolver = socket.getaddrinfo) -> None:
        self._networks: list[IPNetwork] = []
        self._names: set[str] = set()
        for entry in allow:
            entry = entry.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                self._names.add(entry.rstrip("."))
                continue
            if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED) and net.prefixlen >= 96:
                # ::ffff:a.b.c.d/n is judged as a.b.c.d, like the addresses it is matched against
                net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
            self._networks.append(net)
        self._resolve = resolve

    def allowed(self, ip: IPAddress) -> bool:
        ip = unmap(ip)
        return any(ip.version == net.version and ip in net for net in self._networks)

    def check(self, url: str, *, timeout: float | None = None, label: str | None = None) -> Target:
        """Parse `url`, resolve its host once and check every address; Refused names the rule broken."""
        label = label or f"image_url {shorten(url)}"
        parsed = parse_url(url, label)
        if parsed.ip is not None:
            addresses: tuple[IPAddress, ...] = (unmap(parsed.ip),)
        else:
            addresses = self._lookup(parsed, timeout, label)
        if parsed.host in self._names:
            return Target(parsed, addresses)
        for ip in addresses:
            why = None if self.allowed(ip) else refusal(ip)
            if why is not None:
                if parsed.ip is None:
                    what = f"{parsed.host} resolves to {ip},"
                elif parsed.ip != ip:  # an IPv4-mapped spelling
                    what = f"{parsed.ip} is {ip},"
                else:
                    what = f"{ip} is"
                raise Refused(f"{label} was refused: {what} {why}; set {ALLOW_VARIABLE} to allow it")
        return Target(parsed, addresses)

    def _lookup(self, parsed: ParsedURL, timeout: float | None, label: str) -> tuple[IPAddress, ...]:
        """One getaddrinfo call, bounded by `timeout` (it runs in a thread: the C call cannot be cut)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["infos"] = self._resolve(parsed.host, parsed.port, type=socket.SOCK_STREAM)
            except Exception as exc:  # reported below, in the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=run, name="netguard-resolve", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ImageFetchError(f"{label} could not be fetched: resolving {parsed.host} timed out")
        if "error" in box:
            err = box["error"]
            why = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise ImageFetchError(f"{label} could not be fetched: {parsed.host} did not resolve ({why})")
        found: list[IPAddress] = []
        for info in box.get("infos") or ():
            try:
                ip = unmap(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
            except (ValueError, IndexError, TypeError):
                continue  # not an IP family (e.g. AF_UNIX); never connected to
            if ip not in found:
                found.append(ip)
        if not found:
            raise ImageFetchError(f"{label} could not be fetched: {parsed.host} resolved to no address")
        return tuple(found)


def shorten(url: str, limit: int = 200) -> str:
    """A URL fit for a message or a log line: data URLs lose their payload, long ones are cut."""
    if url[:5].lower() == "data:":
        head = url.split(",", 1)[0].split(";", 1)[0]
        return head[:64]
    url = _USERINFO.sub(r"\1***@", url)  # never echo a password
    return url if len(url) <= limit else url[: limit - 3] + "..."
