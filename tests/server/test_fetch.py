"""ImageLoader (server/fetch.py) against real loopback HTTP(S) servers started here.

Every request these tests make goes to 127.0.0.0/8 or ::1: an audit hook fails any test whose process
tries to connect elsewhere, so a broken SSRF rule shows up as a failure, never as outside traffic."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import ipaddress
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionrag.server.errors import (
    ImageFetchError,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedImage,
    VisionRAGError,
)
from visionrag.server.fetch import ImageLoader, LoadedImage
from visionrag.server.settings import Settings

# ---- safety net: no connection leaves loopback --------------------------------------------------------

_GUARD = {"active": False, "violations": []}


class NonLoopbackConnect(RuntimeError):
    """Raised by the audit hook: the code under test tried to leave loopback."""


def _audit(event: str, args: tuple) -> None:
    if event != "socket.connect" or not _GUARD["active"]:
        return
    address = args[1]
    if isinstance(address, tuple) and isinstance(address[0], str):
        try:
            ip = ipaddress.ip_address(address[0].split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None and isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is None or not ip.is_loopback:
            _GUARD["violations"].append(address)
            raise NonLoopbackConnect(f"test tried to connect to {address}")


if not getattr(sys, "_visionrag_fetch_audit", False):
    sys.addaudithook(_audit)
    sys._visionrag_fetch_audit = True


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    _GUARD["active"], _GUARD["violations"] = True, []
    try:
        yield
    finally:
        _GUARD["active"] = False
    assert not _GUARD["violations"], f"connections outside loopback: {_GUARD['violations']}"


# ---- images ----------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is a few bytes (decoding would fail)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


PNG = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")
JPEG = encode(Image.new("RGB", (40, 30), (10, 120, 250)), "JPEG")
NOISE_PNG = encode(Image.frombytes("RGB", (128, 128), random.Random(7).randbytes(128 * 128 * 3)), "PNG")
TRUNCATED_PNG = NOISE_PNG[: len(NOISE_PNG) // 2]
WIDE_PNG = encode(Image.new("L", (2000, 1000), 255), "PNG")  # 2 M pixels in a few KB
BOMB_PNG = png_header_only(50_000, 50_000)
HEADER_ONLY_PNG = png_header_only(3000, 3000)


# ---- the loopback image server --------------------------------------------------------------------


class ImageServer:
    """A ThreadingHTTPServer on loopback that records every request it sees."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_cls((host, 0), _handler_for(self))
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: ImageServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            path = urlsplit(self.path).path
            route = ROUTES.get(path)
            if route is None:
                for prefix, fn in PREFIX_ROUTES.items():
                    if path.startswith(prefix):
                        route = fn
                        break
            try:
                if route is None:
                    self.send_error(404, "Not Found")
                else:
                    route(self, server)
            except OSError:  # the client hung up: expected for caps and timeouts
                pass

        def body(self, data: bytes, content_type: str = "image/png", status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def redirect(self, location: str, status: int = 302) -> None:
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _drip(h, s: ImageServer) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.write(PNG[:20])
    for _ in range(1000):  # one byte every 50 ms: each read is quick, the whole body never ends
        if s.stop.wait(0.05):
            return
        h.wfile.write(b"\0")
        h.wfile.flush()


def _drip_headers(h, s: ImageServer) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(1000):
        if s.stop.wait(0.05):
            return
        h.wfile.write(f"X-Slow-{i}: 1\r\n".encode())
        h.wfile.flush()


def _silent(h, s: ImageServer) -> None:
    s.stop.wait(30)


def _huge_content_length(h, s: ImageServer) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", str(10**9))
    h.end_headers()
    h.wfile.flush()
    s.stop.wait(30)  # sends nothing: a loader that started reading would time out instead


def _endless(h, s: ImageServer, chunked: bool = False) -> None:
    if chunked:
        h.protocol_version = "HTTP/1.1"
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    if chunked:
        h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    block = PNG + b"\0" * (65536 - len(PNG))
    for _ in range(16_384):  # up to 1 GiB, stopped by the client hanging up
        if s.stop.is_set():
            return
        h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)


def _short_body(h, s: ImageServer) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(PNG)))
    h.end_headers()
    h.wfile.write(PNG[:10])
    h.close_connection = True


def _redirect_chain(h, s: ImageServer) -> None:
    """/r/N redirects N times in all, then serves the PNG; odd hops use absolute URLs."""
    n = int(h.path.rsplit("/", 1)[1])
    nxt = "/img.png" if n <= 1 else f"/r/{n - 1}"
    h.redirect(
        nxt if n % 2 == 0 else f"http://127.0.0.1:{s.port}{nxt}", status=(301, 302, 303, 307, 308)[n % 5]
    )


def _redirect_to(h, s: ImageServer) -> None:
    h.redirect(parse_qs(urlsplit(h.path).query)["u"][0])


ROUTES: dict[str, Callable] = {
    "/img.png": lambda h, s: h.body(PNG),
    "/img.jpg": lambda h, s: h.body(JPEG, "image/jpeg"),
    "/text.txt": lambda h, s: h.body(b"hello, I am not an image\n", "text/plain"),
    "/truncated.png": lambda h, s: h.body(TRUNCATED_PNG),
    "/wide.png": lambda h, s: h.body(WIDE_PNG),
    "/bomb.png": lambda h, s: h.body(BOMB_PNG),
    "/header-only.png": lambda h, s: h.body(HEADER_ONLY_PNG),
    "/error": lambda h, s: h.send_error(500, "Broken"),
    "/drip": _drip,
    "/drip-headers": _drip_headers,
    "/silent": _silent,
    "/huge-length": _huge_content_length,
    "/endless": _endless,
    "/endless-chunked": lambda h, s: _endless(h, s, chunked=True),
    "/short-body": _short_body,
    "/to": _redirect_to,
    "/no-location": lambda h, s: h.body(b"", status=302),
}
PREFIX_ROUTES: dict[str, Callable] = {"/r/": _redirect_chain}


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    srv = ImageServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def server6() -> Iterator[ImageServer]:
    try:
        srv = ImageServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _fresh_log(request) -> None:
    for name in ("server", "server6"):
        if name in request.fixturenames:
            request.getfixturevalue(name).requests.clear()


def make_loader(allow: tuple[str, ...] = ("127.0.0.1",), **kw) -> ImageLoader:
    resolve = kw.pop("resolve", None)
    ssl_context = kw.pop("ssl_context", None)
    overrides = {"allow_private_hosts": allow, "fetch_timeout": 5.0, **kw}
    settings = Settings.load(environ={}, dotenv_path=None, overrides=overrides)
    extra = {"resolve": resolve} if resolve else {}
    return ImageLoader(settings, ssl_context=ssl_context, **extra)


def fake_resolver(table: dict[str, list[str]], calls: list[str]):
    def resolve(host, port, *args, **kwargs):
        calls.append(host)
        answer = table[host]
        addresses = answer.pop(0) if answer and isinstance(answer[0], list) else answer
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


# ---- what works ------------------------------------------------------------------------------------


def test_png_and_jpeg_over_http(server):
    loader = make_loader()
    url = f"http://127.0.0.1:{server.port}/img.png?v=1"
    got = loader.load_url(url)
    assert isinstance(got, LoadedImage)
    assert (got.image.mode, got.image.size, got.data, got.source) == ("RGB", (64, 48), PNG, url)
    assert got.image.getpixel((0, 0)) == (200, 30, 30)
    assert got.sha256 == hashlib.sha256(PNG).hexdigest()
    jpeg = loader.load_url(f"http://127.0.0.1:{server.port}/img.jpg")
    assert (jpeg.image.mode, jpeg.image.size) == ("RGB", (40, 30))
    path, headers = server.requests[0]
    assert path == "/img.png?v=1"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["accept-encoding"] == "identity"


def test_redirects_up_to_three_are_followed_and_four_are_not(server):
    loader = make_loader()
    assert loader.load_url(f"http://127.0.0.1:{server.port}/r/3").data == PNG
    assert server.paths() == ["/r/3", "/r/2", "/r/1", "/img.png"]
    server.requests.clear()
    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        loader.load_url(f"http://127.0.0.1:{server.port}/r/4")
    assert "/img.png" not in server.paths()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("http://127.0.0.2:{port}/img.png", "127.0.0.2 is a loopback address"),
        ("http://2130706434:{port}/img.png", "127.0.0.2 is a loopback"),
        ("http://0x7f.2:{port}/img.png", "127.0.0.2 is a loopback"),
        ("http://[::ffff:127.0.0.2]:{port}/img.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/x.png", "10.0.0.1 is a private address (RFC 1918)"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1:{port}/_x", "scheme 'gopher'"),
        ("data:image/png;base64," + base64.b64encode(PNG).decode(), "scheme 'data'"),
    ],
)
def test_every_redirect_hop_is_checked(server, target, words):
    loader = make_loader(allow=("127.0.0.1/32",))
    hop = target.format(port=server.port)
    with pytest.raises(ImageFetchError) as err:
        loader.load_url(f"http://127.0.0.1:{server.port}/to?u={quote(hop, safe='')}")
    assert err.value.status_code == 422
    assert words in err.value.detail and "redirect 1 to" in err.value.detail
    assert server.paths() == [f"/to?u={quote(hop, safe='')}"]  # the redirect target never saw a request


# ---- SSRF: every spelling of loopback against a server that would answer ---------------------------

SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "0177.0000.0000.01",
    "127.1",
    "127.0.1",
    "127.0.0.1.",
    "LOCALHOST",
    "localhost",
    "localhost.",
    "0.0.0.0",
    "0",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::127.0.0.1]",
    "[2002:7f00:1::]",
    "[::]",
]


@pytest.mark.parametrize("host", SPELLINGS)
def test_loopback_spellings_are_refused(server, host):
    url = f"http://{host}:{server.port}/img.png"
    with pytest.raises(ImageFetchError) as err:
        make_loader(allow=()).load_url(url)
    assert err.value.status_code == 422
    assert f"image_url {url} was refused" in err.value.detail
    assert "VISIONRAG_ALLOW_PRIVATE_HOSTS" in err.value.detail
    assert server.requests == []
    # The same server answers the moment the address is allowed, so the refusal above was the rule's.
    assert make_loader(allow=("127.0.0.1",)).load_url(f"http://127.0.0.1:{server.port}/img.png").data == PNG


def test_ipv6_loopback_is_refused_unless_allowed(server6):
    url = f"http://[::1]:{server6.port}/img.png"
    for allow in ((), ("127.0.0.1",), ("fe80::/10",)):
        with pytest.raises(ImageFetchError, match=r"::1 is the loopback address"):
            make_loader(allow=allow).load_url(url)
    assert server6.requests == []
    assert make_loader(allow=("::1",)).load_url(url).data == PNG
    assert server6.requests[0][1]["host"] == f"[::1]:{server6.port}"


@pytest.mark.parametrize("allow", [("127.0.0.1",), ("127.0.0.0/8",), ("::ffff:127.0.0.1",), ("localhost",)])
def test_allowlist_by_ip_cidr_and_name(server, allow):
    got = make_loader(allow=allow).load_url(f"http://localhost:{server.port}/img.png")
    assert got.data == PNG
    assert server.requests[-1][1]["host"] == f"localhost:{server.port}"


def test_a_listed_name_does_not_allow_other_names(server):
    with pytest.raises(ImageFetchError, match="refused"):
        make_loader(allow=("images.test",)).load_url(f"http://127.0.0.1:{server.port}/img.png")
    assert server.requests == []


# ---- DNS: one lookup, connect to the checked address ----------------------------------------------


def test_connects_to_the_address_it_checked_and_resolves_once(server):
    calls: list[str] = []
    # The first answer is allowed; every later one points at a private address (DNS rebinding).
    resolve = fake_resolver({"images.test": [["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]]}, calls)
    loader = make_loader(allow=("127.0.0.1",), resolve=resolve)
    got = loader.load_url(f"http://images.test:{server.port}/img.png")
    assert got.data == PNG
    assert calls == ["images.test"]
    assert server.requests[0][1]["host"] == f"images.test:{server.port}"
    with pytest.raises(ImageFetchError, match=r"images\.test resolves to 10\.0\.0\.1, a private address"):
        loader.load_url(f"http://images.test:{server.port}/img.png")
    assert calls == ["images.test", "images.test"]
    assert len(server.requests) == 1


def test_falls_over_between_checked_addresses_only(server):
    calls: list[str] = []
    # 127.0.0.2 has no listener (connection refused), 127.0.0.1 answers: both were checked.
    resolve = fake_resolver({"images.test": ["127.0.0.2", "127.0.0.1"]}, calls)
    got = make_loader(allow=("127.0.0.0/8",), resolve=resolve).load_url(
        f"http://images.test:{server.port}/img.png"
    )
    assert got.data == PNG and calls == ["images.test"]


@pytest.mark.parametrize(
    ("answer", "bad"),
    [
        (["93.184.216.34", "127.0.0.1"], "127.0.0.1"),
        (["127.0.0.1", "10.0.0.1"], "10.0.0.1"),
        (["::1"], "::1"),
    ],
)
def test_a_name_with_any_refused_address_is_refused(server, answer, bad):
    calls: list[str] = []
    allow = () if bad == "127.0.0.1" else ("127.0.0.1",)
    loader = make_loader(allow=allow, resolve=fake_resolver({"mixed.test": answer}, calls))
    with pytest.raises(ImageFetchError, match=re.escape(f"mixed.test resolves to {bad}")):
        loader.load_url(f"http://mixed.test:{server.port}/img.png")
    assert server.requests == []


def test_unresolvable_name_is_422(server):
    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loader = make_loader(resolve=nxdomain)
    with pytest.raises(ImageFetchError, match=r"nowhere\.test did not resolve"):
        loader.load_url("http://nowhere.test/x.png")


# ---- HTTPS: SNI and certificate checked against the name, socket to the checked address ------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    names: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    srv = ImageServer(tls=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(d / "cert.pem"))
    yield srv, client_ctx, names
    srv.close()


def test_https_sends_sni_and_verifies_the_name_not_the_address(tls):
    srv, client_ctx, names = tls
    calls: list[str] = []
    resolve = fake_resolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}, calls)
    loader = make_loader(resolve=resolve, ssl_context=client_ctx)
    assert loader.load_url(f"https://images.test:{srv.port}/img.png").data == PNG
    assert names[-1] == "images.test"
    assert srv.requests[-1][1]["host"] == f"images.test:{srv.port}"
    with pytest.raises(ImageFetchError, match="certificate"):
        loader.load_url(f"https://other.test:{srv.port}/img.png")
    with pytest.raises(ImageFetchError, match="certificate"):  # the address is not the certified name
        loader.load_url(f"https://127.0.0.1:{srv.port}/img.png")
    with pytest.raises(ImageFetchError, match="certificate"):  # the system store does not know this CA
        make_loader(resolve=resolve).load_url(f"https://images.test:{srv.port}/img.png")
    assert len(srv.requests) == 1


# ---- failures: status, size, time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("/missing.png", ImageFetchError, "HTTP 404"),
        ("/error", ImageFetchError, "HTTP 500"),
        ("/no-location", ImageFetchError, "without a Location"),
        ("/short-body", ImageFetchError, "short of its Content-Length"),
        ("/text.txt", UnsupportedImage, "not an image"),
        ("/truncated.png", UnsupportedImage, "could not be decoded"),
        ("/bomb.png", PayloadTooLarge, "pixels"),
        ("/header-only.png", PayloadTooLarge, "3000x3000 = 9000000 pixels"),
        ("/wide.png", PayloadTooLarge, "2000x1000"),
    ],
)
def test_failures_map_to_their_status(server, path, error, words):
    url = f"http://127.0.0.1:{server.port}{path}"
    with pytest.raises(error) as err:
        make_loader(max_image_pixels=1_000_000).load_url(url)
    assert words in err.value.detail
    assert url in err.value.detail
    assert err.value.status_code == {ImageFetchError: 422, UnsupportedImage: 415, PayloadTooLarge: 413}[error]


def test_connection_refused_is_422():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    with pytest.raises(ImageFetchError, match="connection refused"):
        make_loader().load_url(f"http://127.0.0.1:{port}/img.png")


@pytest.mark.parametrize("path", ["/endless", "/endless-chunked", "/huge-length"])
def test_byte_cap_stops_the_download(server, path):
    start = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="limit") as err:
        make_loader(max_image_bytes=200_000, fetch_timeout=20).load_url(
            f"http://127.0.0.1:{server.port}{path}"
        )
    assert err.value.status_code == 413
    assert time.monotonic() - start < 10  # endless bodies end at the cap, not at the timeout


def test_content_length_above_the_cap_is_refused_before_reading(server):
    with pytest.raises(PayloadTooLarge, match=r"1000000000 bytes \(Content-Length\)"):
        make_loader(max_image_bytes=200_000, fetch_timeout=20).load_url(
            f"http://127.0.0.1:{server.port}/huge-length"
        )


@pytest.mark.parametrize("path", ["/drip", "/drip-headers", "/silent"])
def test_fetch_timeout_bounds_the_whole_transfer(server, path):
    start = time.monotonic()
    with pytest.raises(ImageFetchError, match=r"timed out after 1 s") as err:
        make_loader(fetch_timeout=1).load_url(f"http://127.0.0.1:{server.port}{path}")
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3, elapsed
    assert err.value.status_code == 422


def test_a_hanging_resolver_counts_against_the_timeout():
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(10)
        return []

    start = time.monotonic()
    try:
        with pytest.raises(ImageFetchError, match="timed out"):
            make_loader(fetch_timeout=0.5, resolve=hang).load_url("http://slow.test/x.png")
    finally:
        release.set()
    assert time.monotonic() - start < 2


# ---- input errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "non-empty"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://127.0.0.1/x.png", "scheme 'ftp'"),
        ("gopher://127.0.0.1:70/_GET", "scheme 'gopher'"),
        ("127.0.0.1/x.png", "scheme"),
        ("http://user:s3cr3t@127.0.0.1/x.png", "credentials"),
        ("http://[::1", "not a valid URL"),
        ("http://a b/", "malformed host"),
        ("http://127.0.0.1:70000/", "outside 1-65535"),
        ("data:image/png;base64,!!!notbase64!!!", "bad base64"),
        ("data:image/png;base64,QUJD=QUJD", "bad base64"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:nocomma", "malformed data URL"),
    ],
)
def test_bad_urls_are_invalid_input(url, words):
    with pytest.raises(InvalidInput) as err:
        make_loader().load_url(url)
    assert err.value.status_code == 422
    assert words in err.value.detail
    assert "s3cr3t" not in err.value.detail


# ---- data URLs and uploads -------------------------------------------------------------------------


def test_data_url():
    b64 = base64.b64encode(PNG).decode()
    got = make_loader().load_url(f"data:image/png;base64,{b64}")
    assert (got.data, got.source, got.image.size) == (PNG, "data:image/png", (64, 48))
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert make_loader().load_url(f"DATA:IMAGE/PNG;BASE64,{wrapped}").data == PNG
    urlsafe = base64.urlsafe_b64encode(NOISE_PNG).decode().rstrip("=")
    assert make_loader().load_url(f"data:image/png;base64,{urlsafe}").data == NOISE_PNG
    jpeg = make_loader().load_url("data:image/jpeg;base64," + base64.b64encode(JPEG).decode())
    assert jpeg.source == "data:image/jpeg"


def test_data_url_errors():
    with pytest.raises(UnsupportedImage, match="text/plain"):
        make_loader().load_url("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(UnsupportedImage):
        make_loader().load_url("data:image/png;base64,aGVsbG8=")
    big = base64.b64encode(NOISE_PNG).decode()
    with pytest.raises(PayloadTooLarge) as err:
        make_loader(max_image_bytes=1000).load_url(f"data:image/png;base64,{big}")
    assert big[:50] not in err.value.detail  # the payload never appears in a message
    with pytest.raises(PayloadTooLarge):  # decoded size is checked too, not only the text length
        make_loader(max_image_bytes=len(NOISE_PNG) - 1).load_url(f"data:image/png;base64,{big}")
    with pytest.raises(PayloadTooLarge, match="pixels"):
        make_loader().load_url("data:image/png;base64," + base64.b64encode(BOMB_PNG).decode())


def test_load_bytes_caps_and_decodes():
    loader = make_loader(max_image_bytes=len(PNG))
    got = loader.load_bytes(PNG)
    assert (got.source, got.image.mode) == ("upload", "RGB")
    with pytest.raises(PayloadTooLarge, match="the uploaded image is larger than"):
        loader.load_bytes(PNG + b"\0")
    with pytest.raises(UnsupportedImage, match="empty"):
        loader.load_bytes(b"")
    with pytest.raises(UnsupportedImage, match="not an image"):
        loader.load_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(UnsupportedImage, match="could not be decoded"):
        make_loader().load_bytes(TRUNCATED_PNG)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        make_loader(max_image_pixels=100).load_bytes(PNG)


def _rgba() -> Image.Image:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))
    return img


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize(
    ("make", "fmt", "corner", "middle"),
    [
        (_rgba, "PNG", (255, 255, 255), (255, 0, 0)),
        (_palette_with_transparency, "PNG", (255, 255, 255), (255, 0, 0)),
        (lambda: Image.new("LA", (4, 4), (0, 0)), "PNG", (255, 255, 255), (255, 255, 255)),
        (lambda: Image.new("L", (4, 4), 77), "PNG", (77, 77, 77), (77, 77, 77)),
        (lambda: Image.new("1", (4, 4), 1), "PNG", (255, 255, 255), (255, 255, 255)),
        (lambda: Image.new("I;16", (4, 4), 65535), "PNG", (255, 255, 255), (255, 255, 255)),
        (lambda: Image.new("I;16", (4, 4), 32896), "PNG", (128, 128, 128), (128, 128, 128)),
        (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", (255, 255, 255), (255, 255, 255)),
        (lambda: Image.new("RGB", (4, 4), (0, 255, 0)), "GIF", (0, 255, 0), (0, 255, 0)),
        (lambda: Image.new("RGB", (4, 4), (0, 0, 255)), "WEBP", None, None),
        (lambda: Image.new("RGB", (4, 4), (0, 0, 255)), "BMP", (0, 0, 255), (0, 0, 255)),
        (lambda: Image.new("RGB", (4, 4), (0, 0, 255)), "TIFF", (0, 0, 255), (0, 0, 255)),
    ],
)
def test_every_mode_becomes_rgb(make, fmt, corner, middle):
    data = encode(make(), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = make_loader().load_bytes(data).image
    assert (img.mode, img.size) == ("RGB", (4, 4))
    if corner is not None:
        assert img.getpixel((0, 0)) == pytest.approx(corner, abs=2)
        assert img.getpixel((2, 2)) == pytest.approx(middle, abs=2)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert make_loader().load_bytes(data).image.size == (20, 40)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mangled_bytes_and_data_urls_never_crash(data):
    """Any bytes, or any mutation of a real image, ends in an image or a 4xx: never a 500."""
    base = data.draw(st.sampled_from([PNG, JPEG, NOISE_PNG[:4000], encode(_rgba(), "GIF"), b""]))
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(0, 8))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = bytes(blob[: data.draw(st.integers(0, len(blob)))]) + data.draw(st.binary(max_size=16))
    loader = make_loader(max_image_pixels=1_000_000)
    for attempt in (
        lambda: loader.load_bytes(blob),
        lambda: loader.load_url("data:image/png;base64," + base64.b64encode(blob).decode()),
        lambda: loader.load_url("data:image/png;base64," + blob.decode("latin-1")),
    ):
        try:
            got = attempt()
        except VisionRAGError as exc:
            assert 400 <= exc.status_code < 500
        else:
            assert got.image.mode == "RGB"
