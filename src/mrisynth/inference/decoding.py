"""A request body of `mrisynth serve` -> a validated conditioning batch, or the HTTP error to answer.

One pure function (`decode`), run in the server's decode worker processes (`server.DecodePool`) so that
concurrent requests are decoded side by side instead of one at a time under one interpreter lock, or in
the request's own thread (`decode_workers=0`). The body is a JSON object whose `inputs` (or the aliases
`instances`, `conditioning`) holds numbers in nested lists of shape (N, S, S, K) (or (S, S, K), one image):
strings, booleans or nulls in it and absurd nesting are 400, never converted; other keys are ignored
(whatever they hold); more than `max_batch` images are 413; the values are checked by
`core.conditioning.check` (NumPy only, so the workers import neither MLflow nor TensorFlow). Messages
state the model's shape, (N, S, S, K) with its S and K, and never echo the input."""
from __future__ import annotations

import gc
import os
import signal
from http import HTTPStatus

import numpy as np
import orjson

from mrisynth.core import conditioning
from mrisynth.io.workers import end_with_parent

_KEYS = ("inputs", "instances", "conditioning")  # the first one present is read; any other key is ignored
_LITERALS = (b"true", b"false", b"null")


def _shape(size: int, channels: int) -> str:
    return f"(N, {size}, {size}, {channels})"


def _numbers(size: int, channels: int) -> str:
    return f"conditioning: expected numbers (no strings, booleans or nulls) in nested lists of shape {_shape(size, channels)}"


def _send(size: int, channels: int) -> str:
    return f"send {{\"inputs\": {_shape(size, channels)} nested lists}}"


class RequestError(Exception):
    """A request answered with `status` and `message` (picklable: it crosses from a decode worker)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status, self.message = int(status), message


def decode(body: bytes, size: int, channels: int, max_batch: int) -> np.ndarray:
    """The conditioning batch (N, size, size, channels) float32 of a request body; RequestError otherwise."""
    try:
        payload = orjson.loads(body)  # a JSONDecodeError (a ValueError) also for NaN literals and absurd nesting
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested brackets
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON; {_send(size, channels)}") from None
    if not isinstance(payload, dict) or not (set(_KEYS) & set(payload)):
        raise RequestError(HTTPStatus.BAD_REQUEST, "missing 'inputs': expected a JSON object with key 'inputs' holding "
                                                   f"{_shape(size, channels)} conditioning")
    key = next(k for k in _KEYS if k in payload)
    inputs = payload[key]
    if isinstance(inputs, list) and not inputs:  # nothing to render: say so, not "found shape (0,)"
        what = "'inputs' is empty" if key == "inputs" else f"missing 'inputs' ('{key}' is empty)"
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{what}: {_send(size, channels)} with at least one image")
    # Only the inputs must be numbers: np.array(..., float32) would turn true/false into 1/0 and null into NaN, and
    # np.asarray keeps strings as strings ("0" is not 0). A body whose only quotes are its key's and that has none of
    # these literals anywhere (the usual request) is converted at once; otherwise the inputs alone are written back
    # as JSON (by orjson, exactly) and looked at: any literal or quote in them (a string) is refused.
    if body.count(b'"') != 2 or any(literal in body for literal in _LITERALS):
        try:
            text = orjson.dumps(inputs)
        except TypeError:  # nesting deeper than orjson writes (it reads deeper): not an image either
            raise RequestError(HTTPStatus.BAD_REQUEST, _numbers(size, channels)) from None
        if b'"' in text or any(literal in text for literal in _LITERALS):
            raise RequestError(HTTPStatus.BAD_REQUEST, _numbers(size, channels))
    try:
        array = np.array(inputs, np.float32)  # numbers in nested lists only (checked above); ragged or objects: refused
    except (ValueError, TypeError, RecursionError):
        raise RequestError(HTTPStatus.BAD_REQUEST, _numbers(size, channels)) from None
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
