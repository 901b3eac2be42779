"""A loopback HTTP server playing the VisionRAG HTTP contract (DESIGN.md) from memory, for client tests.

Special questions: "boom" answers 500; "fail-mid" streams one piece then an error line.
`gate`: when set to a threading.Event, a stream pauses after its first piece until the event is set.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from visionrag.clients.testing import parse_multipart

MODEL = "tiny-mllama"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-stream is part of the scenarios; socketserver would print its traceback
    to stderr, which the CLI tests capture as the command's own output."""

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        pass


class FakeServer:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.records: dict[str, dict[str, Any]] = {}
        self.images: dict[str, bytes] = {}
        self.requests: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self._clock = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, query: str, answer: str, **fields: Any) -> dict[str, Any]:
        """Store an interaction as /predict would; returns its JSON."""
        with self._lock:
            self._clock += timedelta(minutes=1)
            record = {
                "id": str(uuid.uuid4()),
                "created_at": self._clock.isoformat().replace("+00:00", "Z"),
                "image_url": fields.get("image_url"),
                "query": query,
                "answer": answer,
                "model": MODEL,
                "user": fields.get("user"),
                "tags": list(fields.get("tags") or []),
            }
            record["image"] = f"/history/{record['id']}/image"
            self.records[record["id"]] = record
            self.images[record["id"]] = fields.get("image") or PNG
            return record

    def newest_first(self) -> list[dict[str, Any]]:
        return sorted(self.records.values(), key=lambda r: r["created_at"], reverse=True)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _input(self, body: bytes) -> tuple[dict[str, Any], bytes | None]:
        """(fields, uploaded image) of a JSON or multipart body."""
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            form, files = parse_multipart(content_type, body)
            fields: dict[str, Any] = {k: (v if k == "tags" else v[0]) for k, v in form.items()}
            for key in ("max_tokens", "limit", "offset"):
                if key in fields:
                    fields[key] = int(fields[key])
            for key in ("store", "stream"):
                if key in fields:
                    fields[key] = fields[key] == "true"
            return fields, files["image"][1] if "image" in files else None
        return (json.loads(body) if body else {}), None

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body()
        self.fake.requests.append(
            {
                "method": method,
                "path": url.path,
                "query": parse_qs(url.query),
                "headers": dict(self.headers),
                "body": body,
            }
        )
        authorized = self.headers.get("Authorization") == f"Bearer {self.fake.api_key}"
        if self.fake.api_key and url.path != "/health" and not authorized:
            return self._send(401, {"detail": "missing or wrong API key"})
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if method == "GET" and url.path == "/health":
            return self._send(200, {"status": "ok", "model": MODEL})
        if method == "POST" and url.path == "/predict":
            return self._predict(body)
        if method == "POST" and url.path == "/history/search":
            return self._search(body)
        if method == "GET" and url.path == "/history":
            return self._list(parse_qs(url.query))
        if parts[0] == "history" and len(parts) in (2, 3):
            record = self.fake.records.get(parts[1])
            if record is None:
                return self._send(404, {"detail": f"no interaction with id {parts[1]}"})
            if method == "GET" and len(parts) == 2:
                return self._send(200, record)
            if method == "GET" and parts[2:] == ["image"]:
                return self._send(200, self.fake.images[parts[1]], "image/png")
            if method == "DELETE" and len(parts) == 2:
                del self.fake.records[parts[1]]
                return self._send(200, {"deleted": parts[1]})
        return self._send(404, {"detail": "Not Found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # -- the contract ----------------------------------------------------------------------------------

    def _predict(self, body: bytes) -> None:
        fields, upload = self._input(body)
        question = fields.get("user_query")
        if not question:
            return self._send(422, {"detail": [{"loc": ["body", "user_query"], "msg": "Field required"}]})
        if upload is None and not fields.get("image_url"):
            return self._send(422, {"detail": "give an image: image_url or an uploaded image file"})
        if str(fields.get("image_url", "")).startswith("http://unreachable"):
            return self._send(422, {"detail": "could not fetch image_url: host unreachable"})
        if question == "boom":
            return self._send(500, {"detail": "Internal Server Error"})
        words = f"You asked: {question}".split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        answer = "".join(pieces)
        record = None
        if fields.get("store", True):
            record = self.fake.add(
                question,
                answer,
                image_url=fields.get("image_url"),
                image=upload,
                user=fields.get("user"),
                tags=fields.get("tags"),
            )
        usage = {"prompt_tokens": 7, "completion_tokens": len(pieces)}
        result = {"output": answer, "id": record and record["id"], "model": MODEL, "usage": usage}
        if not fields.get("stream"):
            return self._send(200, result)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, piece in enumerate(pieces):
            self._chunk({"delta": piece})
            if question == "fail-mid":
                self._chunk({"error": {"status": 503, "detail": "the model worker died"}})
                break
            if i == 0 and self.fake.gate is not None:
                self.fake.gate.wait(10)
        else:
            self._chunk({"done": True, **result})
        self.wfile.write(b"0\r\n\r\n")

    def _search(self, body: bytes) -> None:
        fields, upload = self._input(body)
        text = fields.get("text")
        if not text and upload is None and not fields.get("image_url"):
            return self._send(422, {"detail": "give text, image_url or an image file"})
        limit, offset = int(fields.get("limit", 10)), int(fields.get("offset", 0))
        if not 1 <= limit <= 100:
            return self._send(422, {"detail": "limit must be between 1 and 100"})
        records = self._filter(self.fake.newest_first(), fields.get("user"), fields.get("tags"))
        if text:
            records.sort(key=lambda r: text.lower() not in (r["query"] + r["answer"]).lower())
        results = [{**r, "score": round(1 / (1 + i), 4)} for i, r in enumerate(records)]
        self._send(200, {"results": results[offset : offset + limit], "took_ms": 1.5})

    def _list(self, query: dict[str, list[str]]) -> None:
        limit = int(query.get("limit", ["20"])[0])
        offset = int(query.get("offset", ["0"])[0])
        records = self._filter(self.fake.newest_first(), query.get("user", [None])[0], None)
        self._send(200, {"results": records[offset : offset + limit]})

    @staticmethod
    def _filter(records: list[dict], user: str | None, tags: list[str] | None) -> list[dict]:
        if user:
            records = [r for r in records if r["user"] == user]
        if tags:
            records = [r for r in records if set(tags) <= set(r["tags"])]
        return records
