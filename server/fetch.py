"""The one way an image enters the server: an http(s) URL, a data URL, or uploaded bytes.

Every path ends in `ImageLoader.load_bytes`, which enforces the byte cap, reads the pixel count from the
header before decoding (decompression bombs), decodes fully (so a truncated file fails here with 415,
not later in a GPU worker) and converts to RGB.

Downloads go through `server/netguard.py` for every hop: the URL is parsed once, its host resolved once,
every address checked, and the socket is opened to a checked address by this module (stdlib `socket`,
`ssl` and `http.client`), so no library underneath can re-resolve the name or follow a redirect on its
own. TLS sends SNI for the URL's host name and verifies the certificate against it. A watchdog closes
the socket at the deadline, so `fetch_timeout` bounds the whole transfer, slow-drip bodies included
(TGI CVE-2026-0599 was an unbounded download; Open WebUI CVE-2026-45401 followed unchecked redirects).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import io
import logging
import re
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from PIL import Image, ImageOps

from visionrag.server.errors import ImageFetchError, InvalidInput, PayloadTooLarge, UnsupportedImage
from visionrag.server.netguard import NetGuard, Resolver, Target, shorten

if TYPE_CHECKING:
    from visionrag.server.settings import Settings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
# Formats a diagram or photo arrives in. Leaving out the rest keeps Pillow's rarer decoders (and EPS,
# which runs Ghostscript) away from untrusted bytes.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.I | re.S)
_B64_JUNK = re.compile(r"[\s]+")


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # decoded, RGB
    data: bytes  # the original bytes
    sha256: str  # hex of data
    source: str  # the URL as given, "data:image/<fmt>" for data URLs, or "upload"


class ImageLoader:
    """Loads images under the settings' caps. `resolve` (default `socket.getaddrinfo`) and `ssl_context`
    (default: the system's trust store) are injectable so tests can pin names and trust a test CA."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolve: Resolver = socket.getaddrinfo,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_bytes = settings.max_image_bytes
        self.max_pixels = settings.max_image_pixels
        self.timeout = settings.fetch_timeout
        self.guard = NetGuard(settings.allow_private_hosts, resolve=resolve)
        self._ssl = ssl_context or ssl.create_default_context()

    # ---- entry points -------------------------------------------------------------------------------

    def load_url(self, url: str) -> LoadedImage:
        """An http, https or data URL -> LoadedImage; errors per server/errors.py."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidInput("image_url must be a non-empty string")
        url = url.strip()
        if url[:5].lower() == "data:":
            return self._load_data_url(url)
        data = self._download(url)
        return self.load_bytes(data, source=url)

    def load_bytes(self, data: bytes, source: str = "upload") -> LoadedImage:
        """Bytes -> LoadedImage: byte cap, pixel cap from the header, full decode, RGB."""
        what = "the uploaded image" if source == "upload" else f"image {shorten(source)}"
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(self._too_many_bytes(what))
        data = bytes(data)
        if not data:
            raise UnsupportedImage(f"{what} is empty")
        image = self._decode(data, what)
        return LoadedImage(image, data, hashlib.sha256(data).hexdigest(), source)

    # ---- data URLs ----------------------------------------------------------------------------------

    def _load_data_url(self, url: str) -> LoadedImage:
        m = _DATA_URL.fullmatch(url)
        if m is None:
            raise InvalidInput("image_url is a malformed data URL: expected data:image/<type>;base64,<data>")
        media = m["type"].strip().lower()
        if len(media) > 64:
            raise InvalidInput("image_url is a malformed data URL: its media type is too long")
        params = [p.strip().lower() for p in m["params"].split(";") if p.strip()]
        source = f"data:{media}"
        if "base64" not in params:
            raise InvalidInput(f"image_url {source} is not base64-encoded; use data:image/<type>;base64,...")
        if not media.startswith("image/"):
            raise UnsupportedImage(f"image_url {source} is not an image (media type {media or 'missing'})")
        payload = _B64_JUNK.sub("", m["payload"])
        if len(payload) > (self.max_bytes + 2) // 3 * 4 + 4:
            raise PayloadTooLarge(self._too_many_bytes(f"image_url {source}"))
        payload = payload.replace("-", "+").replace("_", "/")
        payload += "=" * (-len(payload) % 4)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"image_url {source} has bad base64 data") from None
        return self.load_bytes(data, source=source)

    # ---- http(s) ------------------------------------------------------------------------------------

    def _download(self, url: str) -> bytes:
        """Follow at most MAX_REDIRECTS redirects, checking every hop; the deadline covers them all."""
        deadline = time.monotonic() + self.timeout
        label = f"image_url {shorten(url)}"
        current, hop_label = url, label
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = self.guard.check(current, timeout=self._remaining(deadline, label), label=hop_label)
            except InvalidInput as exc:
                if hop == 0:
                    raise
                raise ImageFetchError(exc.detail) from None  # the server's redirect is bad, not the input
            location = self._get(target, deadline, label)
            if isinstance(location, bytes):
                log.debug("fetched %s: %d bytes after %d redirects", shorten(url), len(location), hop)
                return location
            if hop == MAX_REDIRECTS:
                break
            current = urljoin(current, location)
            hop_label = f"{label} (redirect {hop + 1} to {shorten(current)})"
        raise ImageFetchError(f"{label} could not be fetched: more than {MAX_REDIRECTS} redirects")

    def _get(self, target: Target, deadline: float, label: str) -> bytes | str:
        """One GET to a checked address: the body, or the Location of a redirect."""
        watchdog = _Watchdog(deadline)
        conn = http.client.HTTPConnection(target.url.host, target.url.port)
        conn.auto_open = 0  # http.client must never open (and resolve) a connection of its own
        try:
            conn.sock = self._connect(target, deadline, label, watchdog)
            return self._exchange(conn, target, label, watchdog.fired)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if watchdog.fired.is_set() or isinstance(exc, TimeoutError):
                raise self._timed_out(label) from None
            raise ImageFetchError(f"{label} could not be fetched: {_describe(exc)}") from None
        finally:
            watchdog.cancel()
            conn.close()

    def _exchange(
        self, conn: http.client.HTTPConnection, target: Target, label: str, fired: threading.Event
    ) -> bytes | str:
        headers = {
            "Host": target.url.host_header,
            "User-Agent": "VisionRAG-image-fetcher/1",
            "Accept": "image/*",
            "Accept-Encoding": "identity",  # count the bytes we store; no gzip bombs
            "Connection": "close",
        }
        conn.request("GET", target.url.target, headers=headers)
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            location = resp.getheader("Location")
            if not location:
                raise ImageFetchError(f"{label} could not be fetched: HTTP {resp.status} without a Location")
            return location.strip()
        if not 200 <= resp.status < 300:
            raise ImageFetchError(
                f"{label} could not be fetched: the server answered HTTP {resp.status} {resp.reason}".rstrip()
            )
        if resp.length is not None and resp.length > self.max_bytes:
            raise PayloadTooLarge(
                f"{label} is {resp.length} bytes (Content-Length), more than the {self.max_bytes}-byte"
                " limit (VISIONRAG_MAX_IMAGE_BYTES)"
            )
        body = bytearray()
        while True:
            chunk = resp.read1(min(_CHUNK, self.max_bytes + 1 - len(body)))
            if fired.is_set():
                raise self._timed_out(label)
            if not chunk:
                break
            body += chunk
            if len(body) > self.max_bytes:
                raise PayloadTooLarge(self._too_many_bytes(label))
        if resp.length:  # bytes promised by Content-Length that never came
            raise ImageFetchError(
                f"{label} could not be fetched: the body ended {resp.length} bytes short of its Content-Length"
            )
        return bytes(body)

    def _connect(self, target: Target, deadline: float, label: str, watchdog: _Watchdog) -> socket.socket:
        """Open a socket to the first checked address that answers (never to a name), then TLS."""
        errors = []
        for ip in target.addresses:
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            sock = watchdog.watch(socket.socket(family, socket.SOCK_STREAM))
            try:
                sock.settimeout(self._remaining(deadline, label))
                sock.connect((str(ip), target.url.port))
                if target.url.scheme == "https":
                    # SNI and certificate verification use the URL's host name, not the address.
                    sock = watchdog.watch(self._ssl.wrap_socket(sock, server_hostname=target.url.host))
                return sock
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise ImageFetchError(
                    f"{label} could not be fetched: TLS certificate check failed ({exc.verify_message})"
                ) from None
            except OSError as exc:
                sock.close()
                if watchdog.fired.is_set() or isinstance(exc, TimeoutError):
                    raise self._timed_out(label) from None
                errors.append(f"{ip}: {_describe(exc)}")
        raise ImageFetchError(f"{label} could not be fetched: could not connect ({'; '.join(errors)})")

    # ---- decoding -----------------------------------------------------------------------------------

    def _decode(self, data: bytes, what: str) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise PayloadTooLarge(f"{what} has more pixels than the limit (decompression bomb)") from None
        except Exception:  # UnidentifiedImageError, or a plugin choking on a malformed header
            raise UnsupportedImage(
                f"{what} is not an image this server decodes ({', '.join(FORMATS)})"
            ) from None
        width, height = img.size
        if width * height > self.max_pixels:
            raise PayloadTooLarge(
                f"{what} is {width}x{height} = {width * height} pixels, more than the {self.max_pixels}"
                "-pixel limit (VISIONRAG_MAX_IMAGE_PIXELS)"
            )
        try:
            img.load()
            return to_rgb(img)
        except Image.DecompressionBombError:
            raise PayloadTooLarge(f"{what} has more pixels than the limit (decompression bomb)") from None
        except Exception as exc:  # any decoder failure is the file's fault: 415, never 500
            raise UnsupportedImage(
                f"{what} could not be decoded ({img.format}, {type(exc).__name__}: {exc})"
            ) from None

    # ---- helpers ------------------------------------------------------------------------------------

    def _remaining(self, deadline: float, label: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out(label)
        return left

    def _timed_out(self, label: str) -> ImageFetchError:
        return ImageFetchError(
            f"{label} could not be fetched: timed out after {self.timeout:g} s (VISIONRAG_FETCH_TIMEOUT)"
        )

    def _too_many_bytes(self, what: str) -> str:
        return f"{what} is larger than the {self.max_bytes}-byte limit (VISIONRAG_MAX_IMAGE_BYTES)"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode -> RGB: EXIF rotation applied, transparency over white, 16-bit scaled to 8."""
    with contextlib.suppress(Exception):  # a broken EXIF block is not worth refusing the image for
        img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        img = img.convert("I") if mode.startswith("I;16") else img
        high = img.getextrema()[1]
        if high > 255:  # 16-bit (or wider) samples: scale, don't clip everything to white
            scale = 255.0 / (65535.0 if high <= 65535 else float(high))
            img = img.point(lambda v: v * scale)
        return img.convert("L").convert("RGB")
    if (mode in ("P", "PA") and ("transparency" in img.info or mode == "PA")) or mode in ("LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


class _Watchdog:
    """Shuts the watched socket down at the deadline, waking any blocked connect, handshake or read:
    per-operation socket timeouts alone let a slow drip run forever."""

    def __init__(self, deadline: float) -> None:
        self.fired = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._abort)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sock = sock
        if self.fired.is_set():
            self._abort()
        return sock

    def _abort(self) -> None:
        self.fired.set()
        with self._lock:
            sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):  # socket.socket's shutdown, not SSLSocket's: wake the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
