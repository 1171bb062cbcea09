"""`mrisynth serve`: the registered generator over HTTP, validated and bounded.

    POST /invocations   {"inputs": (N, S, S, K) conditioning}  ->  {"predictions": (N, S, S, C) images in [0, 1]}
    GET  /ping          200 when the model is loaded

Bounds (configurable): a request body over `max_bytes` is refused with 413 before it is read; more
than `max_batch` images -> 413; a body without Content-Length -> 411. The body is read first, under one
deadline for the whole body (`body_timeout_s`, 408 after it: a client that trickles bytes cannot hold
the server), and only then does the request take one of `MAX_ACTIVE` slots to be parsed and validated
(`decoding.decode`, in one of `decode_workers` processes: JSON decoding holds Python's interpreter lock, so
threads would decode concurrent requests one at a time);
its images then join a micro-batch (`MicroBatcher`): requests that arrive within `batch_wait_ms` of each
other are merged into one model call of at most `max_batch` images, and each gets its own rows back (one
model call runs at a time; requests whose body is in and that are still being decoded are waited for, up
to `DECODE_WAIT_MS`). Slow senders never delay the others. Bodies being read or waiting
hold at most `BODY_BUDGET` x max_bytes of memory together; past that a request gets 503 at once. `inputs` must hold numbers in
nested lists (strings, booleans, nulls and absurd nesting are 400, not converted; other keys are ignored); a failure that is not the
request's (the model's) is 500, its cause on stderr. Errors are short JSON ({"error_code", "message"}) and
never echo the input. Each answered request writes one access-log
line to stderr: method, path, status and milliseconds until the answer starts
(`POST /invocations 200 12.3 ms`), never the payload; a client that goes away before its answer is sent adds
one line (`POST /invocations 200: client disconnected before the answer was sent (BrokenPipeError)`), no
traceback. `serve` checks --max-bytes and binds the port before the slow model load: a port in use, a bad
host or port is one `error:` line (`bind`, ConfigError) at once. The model is loaded with
`served_model.Generator.load` (Keras flavor, safe_mode): no code from the artifact store runs; a
`models:/NAME@ALIAS` that does not exist stops `serve` with one line saying what to run
(`promote.require_model`)."""
from __future__ import annotations

import errno
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import orjson

from mrisynth.errors import ConfigError
from mrisynth.inference import decoding
from mrisynth.inference.decoding import RequestError
from mrisynth.inference.served_model import DEFAULT_MAX_BATCH, Generator
from mrisynth.io.workers import usable_cores

BYTES_PER_VALUE = 8  # generous JSON size of one conditioning value ("1.0, ")
MAX_ACTIVE = 4       # requests being parsed/validated/predicted at once (bodies are read before, under their own deadline)
TIMEOUT_S = 60       # socket timeout while waiting for a request's headers
BODY_TIMEOUT_S = 30.0  # the whole body of a request must arrive within this many seconds
BODY_BUDGET = 4        # request bodies (of max_bytes) held in memory at once, read or waiting for a slot
BATCH_WAIT_MS = 5.0    # how long the micro-batcher waits for more requests to join the first one
DECODE_WAIT_MS = 50.0  # ... and for requests whose body is in and that are being decoded (JSON -> array, validation)
DECODE_WORKERS = min(MAX_ACTIVE, usable_cores())  # `serve`'s decode
# worker processes (decoding.decode): one per core this process may use


_CONTROL_CHARS = str.maketrans({c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)})  # escaped in the access log


def smallest_body(size: int, channels: int) -> int:
    """A lower bound on the JSON of one (size, size, channels) image: a one-digit number and a separator per value."""
    return 2 * size * size * channels


def default_max_bytes(size: int, max_batch: int, channels: int = 4) -> int:
    return max_batch * size * size * channels * BYTES_PER_VALUE + 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler of one `Service` (set as the class attribute `service` by Service.handler)."""

    service: "Service"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - http.server's own log lines: the access log is `log_request`
        pass

    def handle_one_request(self):
        self._started = time.monotonic()  # restarted by parse_request once the request line is in
        self.command = self.path = None  # a bad request line must not be logged with the previous request's
        self._status = "-"
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as exc:  # the client went away (or stopped reading) while we answered
            self.close_connection = True
            if self.command is not None:  # one line, no traceback (an idle keep-alive connection that drops: nothing)
                sys.stderr.write(f"{self._request_line()} {self._status}: client disconnected before the answer was "
                                 f"sent ({type(exc).__name__})\n")
                sys.stderr.flush()

    def _request_line(self) -> str:
        """Method and path for the log: the path cut to 200 characters, control characters escaped."""
        return f"{self.command or '-'} {(self.path or '-')[:200].translate(_CONTROL_CHARS)}"

    def parse_request(self):  # the request line has arrived: its clock starts
        self._started = time.monotonic()
        return super().parse_request()

    def log_request(self, code="-", size="-"):
        """The access log: send_response calls this once per answer, before any byte of it is sent. One line on
        stderr: method, path, status, milliseconds until the answer starts (never the payload)."""
        self._status = getattr(code, "value", code)
        elapsed_ms = (time.monotonic() - self._started) * 1000
        sys.stderr.write(f"{self._request_line()} {self._status} {elapsed_ms:.1f} ms\n")
        sys.stderr.flush()

    def _reply(self, status: int, body: dict, close: bool = False) -> None:
        # orjson writes a float32 array straight from its buffer: ~25x faster than json.dumps(array.tolist()),
        # which held the GIL for most of a request and kept concurrent requests from overlapping
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
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
        if not self.service.reserve(length):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the server holds as many request bodies as it may; retry shortly", close=True)
            return
        try:
            body = self._read_body(length)
            if body is None:
                return
            with self.service.active, self.service.batcher.admit() as admission:
                self._invoke(body, admission)
        finally:
            self.service.release(length)

    def _read_body(self, length: int) -> bytes | None:
        """The request body, read under one deadline for the whole of it (a 408 after it); None when the
        client timed out or went away (the connection is then closed)."""
        deadline_s = self.service.body_timeout_s
        deadline = time.monotonic() + deadline_s
        chunks, remaining = [], length
        try:
            while remaining > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:  # the client closed its side
                    self.close_connection = True
                    return None
                chunks.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"the request body did not arrive within {deadline_s:g} s; send it at once",
                        close=True)
            return None
        except OSError:  # the client reset the connection: nobody to answer
            self.close_connection = True
            return None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _invoke(self, body: bytes, admission) -> None:
        try:  # decoded and validated per request (a bad one never fails its batch), then predicted in a micro-batch
            batch = self.service.decode(body)
            images = admission.predict(batch)
        except RequestError as exc:
            self._error(HTTPStatus(exc.status), exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - the model or a worker failed: a short answer, the cause on stderr
            sys.stderr.write(f"error while answering {self.path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}\n")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the server failed to render this request; see its log")
            return
        self._reply(200, {"predictions": np.ascontiguousarray(images, np.float32)})


@dataclass
class _Job:
    batch: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class _Admission:
    """A request being decoded for the batcher (`MicroBatcher.admit`): counted as "on its way" until
    `predict` hands its rows over (or the request fails validation and the `with` block ends)."""

    def __init__(self, batcher: "MicroBatcher"):
        self._batcher, self._open = batcher, True

    def __enter__(self) -> "_Admission":
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        job = _Job(batch)
        self._batcher._submit(job, admitted=self._open)
        self._open = False
        return self._batcher._result(job)

    def __exit__(self, *exc) -> None:
        if self._open:
            self._open = False
            self._batcher._leave()


class MicroBatcher:
    """One model call for concurrent requests: a worker thread takes the first waiting request, then every
    request that arrives within `wait_s` while the images fit `max_batch`, calls `predict` once on all of
    them and hands each request its own rows (a request that would overflow the batch starts the next one;
    one model call runs at a time). Requests whose body is already in and that are being decoded
    (`admit`) are waited for up to `decode_wait_s`: they are seconds of CPU away at most, and a model
    call that ran beside their decoding would share the CPU with it and then run again for them.
    Requests still being received are never waited for (a slow sender delays nobody). `calls` counts
    the model calls."""

    def __init__(self, predict, max_batch: int, wait_s: float = BATCH_WAIT_MS / 1000, decode_wait_s: float = DECODE_WAIT_MS / 1000):
        # --batch-wait-ms 0 asks for no batching wait at all: then requests being decoded are not waited for either
        self._predict, self._max, self._wait = predict, max_batch, wait_s
        self._decode_wait = max(wait_s, decode_wait_s) if wait_s > 0 else 0.0
        self._jobs: deque[_Job] = deque()
        self._decoding = 0  # admitted requests that have not submitted their rows yet
        self._changed = threading.Condition()
        self.calls = 0
        threading.Thread(target=self._run, daemon=True, name="micro-batcher").start()

    def admit(self) -> _Admission:
        """`with batcher.admit() as request: ...decode...; request.predict(rows)`: the batcher knows rows are coming."""
        with self._changed:
            self._decoding += 1
        return _Admission(self)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Rows of one request (N, S, S, K) -> its images, computed within a shared model call."""
        job = _Job(batch)
        self._submit(job, admitted=False)
        return self._result(job)

    def _submit(self, job: _Job, admitted: bool) -> None:
        with self._changed:
            self._jobs.append(job)
            if admitted:
                self._decoding -= 1
            self._changed.notify_all()

    def _leave(self) -> None:
        with self._changed:
            self._decoding -= 1
            self._changed.notify_all()

    @staticmethod
    def _result(job: _Job) -> np.ndarray:
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self) -> list[_Job]:
        """The next model call's requests (at least one; blocks until there is one)."""
        with self._changed:
            while not self._jobs:
                self._changed.wait()
            jobs = [self._jobs.popleft()]
            count = len(jobs[0].batch)
            start = time.monotonic()
            while count < self._max:
                if self._jobs:
                    if count + len(self._jobs[0].batch) > self._max:
                        break  # it starts the next call
                    job = self._jobs.popleft()
                    jobs.append(job)
                    count += len(job.batch)
                    continue
                left = start + (self._decode_wait if self._decoding else self._wait) - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._gather()
            try:
                self.calls += 1
                images = self._predict(np.concatenate([job.batch for job in jobs]))
                start = 0
                for job in jobs:
                    job.result, start = images[start : start + len(job.batch)], start + len(job.batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every request of the batch
                for job in jobs:
                    job.error = exc
            for job in jobs:
                job.done.set()


class DecodePool:
    """`workers` spawned processes that run `decoding.decode` (they never import TensorFlow): the JSON
    of concurrent requests is decoded side by side on the machine's cores, where threads would take turns
    under one interpreter lock. Started at once (each worker imports the decoder before the first request).
    A worker that dies breaks the pool: the request that met it is decoded in its own thread and a new pool
    takes over. `workers` 0 (or processes that cannot start): every request is decoded in its own thread."""

    def __init__(self, workers: int):
        self.workers, self._lock = workers, threading.Lock()
        self._pool = self._start() if workers > 0 else None

    def _start(self) -> ProcessPoolExecutor | None:
        """A running pool, or None (decoding stays in the requests' threads) when processes cannot be started."""
        try:
            pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),  # never fork a TensorFlow process
                                       initializer=decoding.start_worker, initargs=(os.getpid(),))
            list(pool.map(decoding.worker_pid, range(self.workers)))  # start-up, not paid by the first requests
            return pool
        except (OSError, BrokenProcessPool) as exc:
            sys.stderr.write(f"decode workers could not start ({type(exc).__name__}: {exc}); decoding in the request threads\n")
            return None

    def decode(self, *args) -> np.ndarray:
        pool = self._pool
        if pool is None:
            return decoding.decode(*args)
        try:
            return pool.submit(decoding.decode, *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    sys.stderr.write("a decode worker died; starting new ones\n")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._start()
            return decoding.decode(*args)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Service:
    """The request path of `serve`: body budget, request slots, decoding (`decode_workers` processes, or 0:
    in the request's thread) and the micro-batcher around one `Generator`."""

    def __init__(self, generator: Generator, max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int | None = None,
                 body_timeout_s: float = BODY_TIMEOUT_S, batch_wait_ms: float = BATCH_WAIT_MS, decode_workers: int = 0):
        self.generator = generator
        self.max_batch = max_batch
        self.body_timeout_s = body_timeout_s
        self._held, self._held_lock = 0, threading.Lock()
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes {max_bytes}: expected a positive number of bytes (None: the default)")
        self.max_bytes = default_max_bytes(generator.size, max_batch, generator.in_channels) if max_bytes is None else max_bytes
        self.active = threading.BoundedSemaphore(MAX_ACTIVE)
        self.batcher = MicroBatcher(generator.predict_checked, max_batch, batch_wait_ms / 1000)  # rows validated by `decode`
        self.decoders = DecodePool(decode_workers)

    def decode(self, body: bytes) -> np.ndarray:
        """A request body -> its validated conditioning batch (decoding.decode; RequestError otherwise)."""
        return self.decoders.decode(body, self.generator.size, self.generator.in_channels, self.max_batch)

    def close(self) -> None:
        """Stop the decode workers (the HTTP server is the caller's)."""
        self.decoders.close()

    def reserve(self, length: int) -> bool:
        """Take `length` bytes of the body budget (BODY_BUDGET x max_bytes); False when it would overflow."""
        with self._held_lock:
            if self._held + length > BODY_BUDGET * self.max_bytes:
                return False
            self._held += length
            return True

    def release(self, length: int) -> None:
        with self._held_lock:
            self._held -= length

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class bound to this service."""
        return type("Handler", (_Handler,), {"service": self})


def freeze_heap() -> None:
    """For a serving process, once its model is loaded: it holds TensorFlow's and the model's long-lived objects
    (~0.5 M), and each request allocates ~10^5 Python floats, which sets off full garbage collections that
    scanned all of them (pauses of 100s of ms, a p95 of 300 ms at concurrency 1). Frozen (after one
    collection, so no garbage is kept) they are no longer scanned. A process-wide step: `serve` (and the
    serving benchmark) take it, a `Service` built in a test does not."""
    gc.collect()
    gc.freeze()


def bind(host: str, port: int) -> ThreadingHTTPServer:
    """The HTTP server's socket, bound to (host, port) but not listening yet (`serve` binds it before the slow
    model load, and listens once the model is in): a bad --host or --port, or a port in use, is a ConfigError
    that says what was given, what was expected and what to do."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected a TCP port from 1 to 65535 (0: any free port); pick one with --port")
    httpd = ThreadingHTTPServer((host, port), _Handler, bind_and_activate=False)  # its handler is set once the model is in
    try:
        httpd.server_bind()
    except (socket.gaierror, UnicodeError) as exc:  # not an IPv4 address, a name that does not resolve
        httpd.server_close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"--host {host}: not an IPv4 address or a host name this machine resolves ({reason}); expected e.g. "
                          "127.0.0.1 (this machine only) or 0.0.0.0 (every interface); fix --host") from None
    except OSError as exc:
        httpd.server_close()
        raise _bind_error(host, port, exc) from None
    return httpd


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    """The one-line error for a socket that could not be bound or listen on (host, port)."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} is in use on {host} (another server is listening there); pick another with "
                           "--port, or stop that server")
    if exc.errno == errno.EACCES:
        return ConfigError(f"port {port} on {host}: permission denied (ports below 1024 need privileges); pick one from "
                           "1024 to 65535 with --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"--host {host}: not an address of this machine; expected one of its own addresses, e.g. "
                           "127.0.0.1 (this machine only) or 0.0.0.0 (every interface); fix --host")
    return ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port")


def check_max_bytes(max_bytes: int | None) -> None:
    """`--max-bytes`: None (the default: max-batch images of JSON) or a positive number of bytes; ConfigError otherwise."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ConfigError(f"--max-bytes {max_bytes}: expected a positive number of bytes (the largest request body); "
                          "leave it out for the default (--max-batch images of JSON)")


def check_fits_one_image(max_bytes: int, size: int, channels: int) -> None:
    """`--max-bytes` against the loaded model (known only then): a limit below one image's JSON would answer
    every request 413; ConfigError instead."""
    smallest = smallest_body(size, channels)
    if max_bytes < smallest:
        raise ConfigError(f"--max-bytes {max_bytes}: cannot hold one {size}x{size}x{channels} image (its JSON takes at least "
                          f"{smallest} bytes); raise it or leave it out for the default")


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001, max_batch: int = DEFAULT_MAX_BATCH,
          max_bytes: int | None = None, body_timeout_s: float = BODY_TIMEOUT_S, batch_wait_ms: float = BATCH_WAIT_MS,
          decode_workers: int | None = None) -> None:
    """Check the options and take the port (ConfigError: one line, before the slow model load), load the model,
    then answer requests until Ctrl-C or SIGTERM."""
    from mrisynth.inference.promote import require_model

    check_max_bytes(max_bytes)
    httpd = bind(host, port)  # before the model load: a port in use or a bad host fails at once
    service = None
    try:
        require_model(model_uri)  # a missing model, alias or version: one line saying what to run, no MLflow traceback
        workers = DECODE_WORKERS if decode_workers is None else decode_workers
        service = Service(Generator.load(model_uri), max_batch, max_bytes, body_timeout_s, batch_wait_ms, workers)
        check_fits_one_image(service.max_bytes, service.generator.size, service.generator.in_channels)
        freeze_heap()
        httpd.RequestHandlerClass = service.handler()
        try:
            httpd.server_activate()  # listening only now: until the model is in, a client's connection is refused
        except OSError as exc:  # another server bound the same port meanwhile and listened first
            raise _bind_error(host, port, exc) from None

        def stop(signum, frame):  # SIGTERM (a process manager, `kill`) stops like Ctrl-C: the decode workers are shut down
            raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
            signal.signal(signal.SIGTERM, stop)
        print(f"serving {model_uri} on http://{host}:{httpd.server_address[1]} (max {service.max_batch} images, {service.max_bytes} "
              f"bytes per request, {workers} decode workers)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    finally:
        httpd.server_close()
        if service is not None:
            service.close()
