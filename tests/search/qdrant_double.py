"""A loopback test double of Qdrant's REST API, for tests of `QdrantClient(url=...)` (no Qdrant server can
be installed here).

It serves exactly the calls the history makes: collection exists / create / get / delete, payload index,
upsert, query (with prefetch and fusion), scroll (with order_by), retrieve, delete and count. Every request
body is parsed with `qdrant_client.http.models` (the client's own pydantic schema, `extra="forbid"`) and
every response is built as the client's response model, so a malformed call or answer fails; each such
failure is also kept in `errors`, which the tests assert empty. Behind it is qdrant-client's in-process
engine (`QdrantClient(":memory:")`). Like a real server, a scroll cannot combine `order_by` with an
`offset`. `down()` closes the port (connection refused, as in an outage) and `up()` opens it again with
the data kept.
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client import QdrantClient
from qdrant_client.http import models as m


class Refused(Exception):
    """An error answer. `fault`: the call was malformed or unauthorised (kept in `errors`); otherwise it is
    a state a real server answers the same way (no such collection, already exists)."""

    def __init__(self, status: int, message: str, fault: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.fault = fault


_COLLECTION = r"/collections/(?P<name>[A-Za-z0-9_\-]+)"


class QdrantDouble:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.engine = QdrantClient(":memory:")
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.calls: list[tuple[str, str, Any]] = []  # (method, route name, parsed body)
        self.created: dict[str, m.CreateCollection] = {}  # the creation request of each collection
        self.httpd: ThreadingHTTPServer | None = None
        self.port = 0
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Any], Any, Any]] = [
            ("GET", re.compile(_COLLECTION + "/exists"), "exists", self._exists, None, m.InlineResponse2009),
            (
                "PUT",
                re.compile(_COLLECTION),
                "create",
                self._create,
                m.CreateCollection,
                m.InlineResponse2001,
            ),
            ("GET", re.compile(_COLLECTION), "info", self._info, None, m.InlineResponse2007),
            ("DELETE", re.compile(_COLLECTION), "drop", self._drop, None, m.InlineResponse2001),
            (
                "PUT",
                re.compile(_COLLECTION + "/index"),
                "index",
                self._index,
                m.CreateFieldIndex,
                m.InlineResponse2008,
            ),
            (
                "PUT",
                re.compile(_COLLECTION + "/points"),
                "upsert",
                self._upsert,
                m.PointInsertOperations,
                m.InlineResponse2008,
            ),
            (
                "POST",
                re.compile(_COLLECTION + "/points/query"),
                "query",
                self._query,
                m.QueryRequest,
                m.InlineResponse20022,
            ),
            (
                "POST",
                re.compile(_COLLECTION + "/points/scroll"),
                "scroll",
                self._scroll,
                m.ScrollRequest,
                m.InlineResponse20019,
            ),
            (
                "POST",
                re.compile(_COLLECTION + "/points"),
                "retrieve",
                self._retrieve,
                m.PointRequest,
                m.InlineResponse20017,
            ),
            (
                "POST",
                re.compile(_COLLECTION + "/points/delete"),
                "delete",
                self._delete,
                m.PointsSelector,
                m.InlineResponse2008,
            ),
            (
                "POST",
                re.compile(_COLLECTION + "/points/count"),
                "count",
                self._count,
                m.CountRequest,
                m.InlineResponse20020,
            ),
        ]
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- availability -------------------------------------------------------------------------------
    def up(self) -> None:
        """Listen (again, on the same port after `down`)."""
        if self.httpd is not None:
            return
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, name="qdrant-double", daemon=True).start()

    def down(self) -> None:
        """Close the port: clients get "connection refused" until `up()`."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def close(self) -> None:
        self.down()
        self.engine.close()

    def count_calls(self, route: str) -> int:
        return sum(1 for _, name, _ in self.calls if name == route)

    # -- HTTP ---------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a `down()` leaves nothing open

            def _serve(self) -> None:
                status, body = double.handle(self.command, self.path, self.headers, self._body())
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        path = urlsplit(target).path
        try:
            if self.api_key is not None and headers.get("api-key") != self.api_key:
                raise Refused(401, "missing or wrong api-key header")
            for verb, pattern, name, action, request_model, response_model in self.routes:
                match = pattern.fullmatch(path)
                if verb != method or match is None:
                    continue
                body = None
                if request_model is not None:
                    try:
                        body = TypeAdapter(request_model).validate_json(raw or b"null")
                    except ValidationError as exc:
                        raise Refused(422, f"{name}: body does not match {request_model}: {exc}") from None
                self.calls.append((method, name, body))
                with self.lock, warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # local mode warns about payload indexes
                    result = action(match["name"], body)
                answer = response_model(result=result, status="ok", time=time.perf_counter() - started)
                return 200, json.loads(answer.model_dump_json(exclude_unset=False))
            raise Refused(404, f"the double does not serve {method} {path}")
        except Refused as exc:
            if exc.fault:
                self.errors.append(f"{method} {path}: {exc}")
            return exc.status, {"status": {"error": str(exc)}, "time": time.perf_counter() - started}
        except Exception as exc:  # the engine refused the call, or a bug in the double: fail the test
            self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return 500, {"status": {"error": f"{type(exc).__name__}: {exc}"}, "time": 0.0}

    # -- the calls ----------------------------------------------------------------------------------
    def _known(self, name: str) -> None:
        if not self.engine.collection_exists(name):
            raise Refused(404, f"Not found: Collection `{name}` does not exist!", fault=False)

    def _exists(self, name: str, _: None) -> m.CollectionExistence:
        return m.CollectionExistence(exists=self.engine.collection_exists(name))

    def _create(self, name: str, body: m.CreateCollection) -> bool:
        if self.engine.collection_exists(name):
            raise Refused(409, f"Wrong input: Collection `{name}` already exists!", fault=False)
        self.created[name] = body
        return self.engine.create_collection(
            name, vectors_config=body.vectors, sparse_vectors_config=body.sparse_vectors
        )

    def _info(self, name: str, _: None) -> m.CollectionInfo:
        self._known(name)
        return self.engine.get_collection(name)

    def _drop(self, name: str, _: None) -> bool:
        return self.engine.delete_collection(name)

    def _index(self, name: str, body: m.CreateFieldIndex) -> m.UpdateResult:
        self._known(name)
        return self.engine.create_payload_index(name, body.field_name, field_schema=body.field_schema)

    def _upsert(self, name: str, body: m.PointsList | m.PointsBatch) -> m.UpdateResult:
        self._known(name)
        points = body.points if isinstance(body, m.PointsList) else body.batch
        return self.engine.upsert(name, points=points)

    def _query(self, name: str, body: m.QueryRequest) -> m.QueryResponse:
        self._known(name)
        return self.engine.query_points(
            name,
            query=body.query,
            using=body.using,
            prefetch=body.prefetch,
            query_filter=body.filter,
            limit=body.limit if body.limit is not None else 10,
            offset=body.offset,
            with_payload=body.with_payload if body.with_payload is not None else False,
            with_vectors=body.with_vector if body.with_vector is not None else False,
            score_threshold=body.score_threshold,
        )

    def _scroll(self, name: str, body: m.ScrollRequest) -> m.ScrollResult:
        self._known(name)
        if body.order_by is not None and body.offset is not None:
            raise Refused(400, "Bad request: Cannot use offset with order_by")
        points, next_offset = self.engine.scroll(
            name,
            scroll_filter=body.filter,
            limit=body.limit if body.limit is not None else 10,
            offset=body.offset,
            order_by=body.order_by,
            with_payload=body.with_payload if body.with_payload is not None else True,
            with_vectors=body.with_vector if body.with_vector is not None else False,
        )
        return m.ScrollResult(points=points, next_page_offset=next_offset)

    def _retrieve(self, name: str, body: m.PointRequest) -> list[m.Record]:
        self._known(name)
        return self.engine.retrieve(
            name,
            ids=body.ids,
            with_payload=body.with_payload if body.with_payload is not None else True,
            with_vectors=body.with_vector if body.with_vector is not None else False,
        )

    def _delete(self, name: str, body: m.PointIdsList | m.FilterSelector) -> m.UpdateResult:
        self._known(name)
        return self.engine.delete(name, points_selector=body)

    def _count(self, name: str, body: m.CountRequest) -> m.CountResult:
        self._known(name)
        return self.engine.count(name, count_filter=body.filter, exact=bool(body.exact))


def payload_sizes(double: QdrantDouble, name: str) -> dict[str, int]:
    """Bytes of each point's payload as JSON (tests check the image copy stays small)."""
    records, _ = double.engine.scroll(name, limit=10_000, with_payload=True)
    return {str(r.id): len(json.dumps(r.payload)) for r in records}


def model_of(body: Any) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True) if isinstance(body, BaseModel) else body
