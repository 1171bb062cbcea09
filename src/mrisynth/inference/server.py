"""`mrisynth serve`: the registered generator over HTTP, validated and bounded.

    POST /invocations   {"inputs": (N, S, S, 4) conditioning}  ->  {"predictions": (N, S, S, C) images in [0, 1]}
    GET  /ping          200 when the model is loaded

Bounds (configurable): a request body over `max_bytes` is refused with 413 before it is read; more
than `max_batch` images -> 413; a body without Content-Length -> 411; at most `MAX_ACTIVE` requests
are read, parsed or predicted at once (others wait) and one prediction runs at a time, so memory is
bounded by about MAX_ACTIVE request bodies; a client that stalls for `TIMEOUT_S` is dropped. Errors are short JSON
({"error_code", "message"}) and never echo the input. The model is loaded with
`serving.Generator.load` (Keras flavor, safe_mode): no code from the artifact store runs."""
from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from mrisynth.inference.served_model import DEFAULT_MAX_BATCH, Generator, InputError

BYTES_PER_VALUE = 8  # generous JSON size of one conditioning value ("1.0, ")
MAX_ACTIVE = 2       # requests being read/parsed/predicted at once
TIMEOUT_S = 60       # socket timeout per request


def default_max_bytes(size: int, max_batch: int, channels: int = 4) -> int:
    return max_batch * size * size * channels * BYTES_PER_VALUE + 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler of one `Service` (set as the class attribute `service` by Service.handler)."""

    service: "Service"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - quiet access log
        pass

    def _reply(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str, close: bool = False) -> None:
        self._reply(status, {"error_code": status.phrase.upper().replace(" ", "_"), "message": message}, close)

    def handle_expect_100(self):
        """`Expect: 100-continue` (curl sends it for large bodies): refuse an oversized body
        before the client sends it, instead of inviting it."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > self.service.max_bytes:
            self._too_large(length)
            return False
        return super().handle_expect_100()

    def _too_large(self, length: int) -> None:
        self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body {length} bytes exceeds the limit of {self.service.max_bytes} bytes "
                    f"(at most {self.service.max_batch} images per request; split the batch)", close=True)

    def do_GET(self):
        if self.path == "/ping":
            self._reply(200, {"status": "ok", "model": self.service.generator.source, "size": self.service.generator.size,
                              "max_batch": self.service.max_batch, "max_bytes": self.service.max_bytes})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; use POST /invocations or GET /ping")

    def do_POST(self):
        if self.path != "/invocations":  # the body stays unread: close, so it is not taken for a request
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; use POST /invocations", close=True)
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header", close=True)
            return
        try:
            length = int(length)
        except ValueError:
            length = -1
        if length < 0:
            self._error(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative number", close=True)
            return
        if length > self.service.max_bytes:
            self._too_large(length)  # answered before the body is read; the connection is closed
            return
        with self.service.active:
            self._invoke(length)

    def _invoke(self, length: int) -> None:
        try:
            payload = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "body is not JSON; send {\"inputs\": (N, S, S, 4) nested lists}")
            return
        if not isinstance(payload, dict) or not ({"inputs", "instances", "conditioning"} & set(payload)):
            self._error(HTTPStatus.BAD_REQUEST, "expected a JSON object with key 'inputs' holding (N, S, S, 4) conditioning")
            return
        inputs = next(payload[k] for k in ("inputs", "instances", "conditioning") if k in payload)
        try:
            array = np.asarray(inputs, dtype=np.float32)
        except (ValueError, TypeError):
            self._error(HTTPStatus.BAD_REQUEST, "conditioning: expected numbers in nested lists of shape (N, S, S, 4)")
            return
        count = 1 if array.ndim == 3 else (int(array.shape[0]) if array.ndim else 0)  # (S, S, 4) is one image
        if count > self.service.max_batch:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{count} images in one request; the limit is {self.service.max_batch}")
            return
        try:
            with self.service.lock:
                images = self.service.generator.predict(array)
        except InputError as exc:
            self._error(HTTPStatus.BAD_REQUEST, exc.message if hasattr(exc, "message") else str(exc))
            return
        self._reply(200, {"predictions": images.tolist()})


class Service:
    def __init__(self, generator: Generator, max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int | None = None):
        self.generator = generator
        self.max_batch = max_batch
        self.max_bytes = max_bytes or default_max_bytes(generator.size, max_batch, generator.in_channels)
        self.lock = threading.Lock()
        self.active = threading.BoundedSemaphore(MAX_ACTIVE)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class bound to this service."""
        return type("Handler", (_Handler,), {"service": self})


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001, max_batch: int = DEFAULT_MAX_BATCH,
          max_bytes: int | None = None) -> None:
    service = Service(Generator.load(model_uri), max_batch, max_bytes)
    httpd = ThreadingHTTPServer((host, port), service.handler())
    print(f"serving {model_uri} on http://{host}:{port} (max {service.max_batch} images, {service.max_bytes} bytes per request)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
