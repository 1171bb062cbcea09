"""A request body of `mrisynth serve` -> a validated conditioning batch, or the HTTP error to answer.

One pure function (`decode`), run in the server's decode worker processes (`server.DecodePool`) so that
concurrent requests are decoded side by side instead of one at a time under one interpreter lock, or in
the request's own thread (`decode_workers=0`). JSON must be numbers in nested lists of shape (N, S, S, K)
(or (S, S, K), one image): strings, booleans, nulls and absurd nesting are 400, never converted; more
than `max_batch` images are 413; the values are checked by `core.conditioning.check` (NumPy only, so the
workers import neither MLflow nor TensorFlow). Messages never echo the input."""
from __future__ import annotations

import gc
import os
import signal
from http import HTTPStatus

import numpy as np
import orjson

from mrisynth.core import conditioning
from mrisynth.io.workers import end_with_parent

_NUMBERS = "conditioning: expected numbers (no strings, booleans or nulls) in nested lists of shape (N, S, S, 4)"
_SEND = "send {\"inputs\": (N, S, S, 4) nested lists}"


class RequestError(Exception):
    """A request answered with `status` and `message` (picklable: it crosses from a decode worker)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status, self.message = int(status), message


def decode(body: bytes, size: int, channels: int, max_batch: int) -> np.ndarray:
    """The conditioning batch (N, size, size, channels) float32 of a request body; RequestError otherwise."""
    if b"true" in body or b"false" in body or b"null" in body:  # no key holds these letters: a literal is not a number
        raise RequestError(HTTPStatus.BAD_REQUEST, _NUMBERS)
    try:
        payload = orjson.loads(body)  # a JSONDecodeError (a ValueError) also for NaN literals and absurd nesting
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested brackets
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON; {_SEND}") from None
    if not isinstance(payload, dict) or not ({"inputs", "instances", "conditioning"} & set(payload)):
        raise RequestError(HTTPStatus.BAD_REQUEST, "missing 'inputs': expected a JSON object with key 'inputs' holding (N, S, S, 4) conditioning")
    key = next(k for k in ("inputs", "instances", "conditioning") if k in payload)
    inputs = payload[key]
    if isinstance(inputs, list) and not inputs:  # nothing to render: say so, not "found shape (0,)"
        what = "'inputs' is empty" if key == "inputs" else f"missing 'inputs' ('{key}' is empty)"
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{what}: {_SEND} with at least one image")
    try:
        # A body whose only quotes are its key's holds no strings (booleans and nulls were refused above):
        # converted straight to float32. Otherwise no dtype, so strings stay strings ("0" is not 0).
        raw = np.array(inputs, np.float32) if body.count(b'"') == 2 else np.asarray(inputs)
    except (ValueError, TypeError, RecursionError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        raise RequestError(HTTPStatus.BAD_REQUEST, _NUMBERS)
    array = raw.astype(np.float32, copy=False)
    count = 1 if array.ndim == 3 else (int(array.shape[0]) if array.ndim else 0)  # (S, S, 4) is one image
    if count > max_batch:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{count} images in one request; the limit is {max_batch}")
    try:
        return conditioning.check(array, size, channels)
    except conditioning.ConditioningError as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None


def start_worker(server_pid: int) -> None:
    """A decode worker's start (the pool's initializer): the objects its imports made
    are frozen for the garbage collector, so the ~10^5 floats each request allocates do not set off full
    collections that scan them all (pauses of 100 ms, a p95 of 150 ms at concurrency 1); and the worker
    ends itself when its server is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops its workers
    gc.collect()
    gc.freeze()

    end_with_parent(server_pid, 0.5, 0)  # a server killed outright (SIGKILL) leaves no orphan decoding workers behind


def worker_pid(_: object = None) -> int:
    """The decode worker's process id (the pool's start-up call: every worker is running before the first request)."""
    return os.getpid()
