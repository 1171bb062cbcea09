"""`mrisynth serve` at its edges: start-up options refused in one line before the model load, request
JSON judged by its `inputs` only (with the model's own channel count in the messages), and clients that
go away mid-answer logged in one line, never a traceback. Tiny fakes, no TensorFlow model."""
import json
import socket
import struct
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pytest

from mrisynth.errors import ConfigError, MrisynthError
from mrisynth.inference import decoding, server
from mrisynth.inference.decoding import RequestError


class _Fake:
    """A stand-in for served_model.Generator (no TensorFlow): S x S pixels, `in_channels` in, 4 out."""

    source, channels = "fake", 4

    def __init__(self, size=8, in_channels=4, out_size=None):
        self.size, self.in_channels, self.out_size = size, in_channels, out_size or size

    def predict_checked(self, batch):
        return np.zeros((len(batch), self.out_size, self.out_size, self.channels), np.float32)


@pytest.fixture
def no_model(monkeypatch):
    """`serve` with the registry check and the model load replaced: the load is recorded and fails."""
    from mrisynth.inference import promote

    loads = []

    def load(uri):
        loads.append(uri)
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(promote, "require_model", lambda uri: None)
    monkeypatch.setattr(server.Generator, "load", staticmethod(load))
    return loads


def test_a_port_in_use_a_bad_port_or_host_and_a_bad_max_bytes_stop_serve_before_the_model_load(no_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            server.serve("models:/m@champion", "127.0.0.1", busy)
        assert f"port {busy} is in use" in str(err.value) and "--port" in str(err.value)
    for host, port, expected in (("127.0.0.1", 70000, "--port 70000: expected a TCP port from 1 to 65535"),
                                 ("127.0.0.1", -1, "--port -1: expected"),
                                 ("999.1.1.1", 5001, "--host 999.1.1.1: not an IPv4 address"),
                                 ("192.0.2.1", 5001, "--host 192.0.2.1: not an address of this machine")):  # TEST-NET-1
        with pytest.raises(ConfigError) as err:
            server.serve("models:/m@champion", host, port)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    for max_bytes in (0, -5):
        with pytest.raises(ConfigError, match=rf"--max-bytes {max_bytes}: expected a positive number of bytes"):
            server.serve("models:/m@champion", "127.0.0.1", 0, max_bytes=max_bytes)
    assert no_model == []  # every one of them before the model load

    # a failure after the bind (here: the model load) gives the port back
    probe = server.bind("127.0.0.1", 0)
    port = probe.server_address[1]  # a free port
    probe.server_close()
    with pytest.raises(RuntimeError, match="the model was loaded"):
        server.serve("models:/m@champion", "127.0.0.1", port)
    assert no_model == ["models:/m@champion"]
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_a_port_taken_while_the_model_loads_is_the_same_one_line_error(monkeypatch):
    """Bound (not listening) during the load: another server that listens on the port meanwhile wins, and
    `serve` says the port is in use instead of a traceback from listen()."""
    from mrisynth.inference import promote

    probe = server.bind("127.0.0.1", 0)
    port = probe.server_address[1]
    probe.server_close()
    other = []

    def load(uri):  # the slow load, during which another server takes the port
        other.append(server.bind("127.0.0.1", port))
        other[0].server_activate()
        return _Fake()

    monkeypatch.setattr(promote, "require_model", lambda uri: None)
    monkeypatch.setattr(server.Generator, "load", staticmethod(load))
    monkeypatch.setattr(server, "freeze_heap", lambda: None)  # a process-wide step, not for the test process
    try:
        with pytest.raises(ConfigError, match=f"port {port} is in use"):
            server.serve("models:/m@champion", "127.0.0.1", port, decode_workers=0)
    finally:
        for httpd in other:
            httpd.server_close()


def test_the_cli_prints_a_busy_port_as_one_error_line(no_model, capsys):
    from mrisynth import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        assert cli.main(["serve", "--model", "models:/m@champion", "--port", str(busy)]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {busy} is in use") and err.count("\n") == 1 and "Traceback" not in err, err
    assert issubclass(ConfigError, MrisynthError) and no_model == []


def test_service_max_bytes_none_is_the_default_and_a_non_positive_one_is_refused():
    fake = _Fake()
    assert _max_bytes_of(fake, None) == server.default_max_bytes(8, 2, 4)
    assert _max_bytes_of(fake, 1) == 1
    for max_bytes in (0, -5):
        with pytest.raises(ValueError, match="expected a positive number of bytes"):
            server.Service(fake, max_batch=2, max_bytes=max_bytes)


def _max_bytes_of(generator, max_bytes):
    return server.Service(generator, max_batch=2, max_bytes=max_bytes).max_bytes


def _answer(body: bytes, channels: int = 4):
    try:
        return decoding.decode(body, 8, channels, 2)
    except RequestError as exc:
        return exc.status, exc.message


def test_only_the_inputs_must_be_numbers_other_keys_are_ignored():
    valid = np.zeros((1, 8, 8, 4)).tolist()
    plain = _answer(json.dumps({"inputs": valid}).encode())
    assert isinstance(plain, np.ndarray) and plain.shape == (1, 8, 8, 4)
    for extra in ({"x": True}, {"x": False}, {"x": None}, {"note": "null"}, {"flags": [True, None, "false"]},
                  {"meta": {"a": "b", "ok": True}}, {"instances": [[True]]}):
        for body in ({"inputs": valid, **extra}, {**extra, "inputs": valid}):
            ours = _answer(json.dumps(body).encode())
            assert isinstance(ours, np.ndarray) and np.array_equal(ours, plain), (extra, ours)
    # literals, strings or objects inside the inputs are still refused with the numbers message
    for bad in ([[[[True] * 4] * 8] * 8], [[[[None] * 4] * 8] * 8], [[[[0.0] * 3 + [False]] * 8] * 8],
                [[[["0"] * 4] * 8] * 8], [[[[{"a": 1}] * 4] * 8] * 8], [[[[{}] * 4] * 8] * 8], "null", [[1, 2], [3]]):
        for body in ({"inputs": bad}, {"inputs": bad, "note": "x"}):
            status, message = _answer(json.dumps(body).encode())
            assert status == 400 and message.startswith("conditioning: expected numbers"), (bad, message)


def test_inputs_nested_deeper_than_orjson_writes_are_400_not_500():
    deep = b'{"inputs": ' + b"[" * 300 + b"0" + b"]" * 300 + b', "note": "x"}'  # the slow path writes the inputs back
    status, message = _answer(deep)
    assert status == 400 and message.startswith("conditioning: expected numbers")


def test_messages_state_the_models_channel_count():
    nine = np.zeros((1, 8, 8, 9))
    nine[..., 5:] = -1
    assert _answer(json.dumps({"inputs": nine.tolist()}).encode(), channels=9).shape == (1, 8, 8, 9)
    for body in (b"{not json", b'{"wrong": 1}', b'{"inputs": []}', b'{"inputs": [[[[true]]]]}',
                 json.dumps({"inputs": np.zeros((1, 8, 8, 4)).tolist()}).encode()):
        status, message = _answer(body, channels=9)
        assert status == 400 and "(N, 8, 8, 9)" in message and "S, 4)" not in message, (body[:30], message)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for every handler (and its log lines)


def test_a_client_that_disconnects_mid_answer_is_one_log_line_not_a_traceback(capfd):
    """`curl ... | head -c 250`: the client reads the start of a large answer and resets the connection. The
    server logs the request and one line saying the answer was not delivered, and serves the next request."""
    service = server.Service(_Fake(out_size=256), max_batch=2)  # an answer of ~1 MB of JSON

    class Handler(service.handler()):
        def setup(self):  # small kernel buffers: the answer cannot all be sent before the client goes
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            super().setup()

    httpd = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    body = json.dumps({"inputs": np.zeros((1, 8, 8, 4)).tolist()}).encode()
    request = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(30)
        client.connect(("127.0.0.1", port))
        client.sendall(request)
        head = b""
        while len(head) < 250 and (chunk := client.recv(250 - len(head))):
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset, like a killed curl
        client.close()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:  # the server goes on
            conn.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := conn.recv(65536):  # the whole answer (closing with unread bytes would be a reset, too)
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("POST /invocations 200 ") and lines[0].endswith(" ms")  # written before the answer
    # the server's threads may write the disconnect line and the next request's line in either order
    gone = [line for line in lines[1:] if line.startswith("POST /invocations 200: client disconnected before the answer was sent (")]
    assert len(gone) == 1 and gone[0].endswith("Error)"), lines
    assert [line for line in lines[1:] if line.startswith("GET /ping 200 ")], lines


def test_a_max_bytes_below_one_image_is_refused_once_the_model_is_known(monkeypatch):
    from mrisynth.inference import promote

    monkeypatch.setattr(promote, "require_model", lambda uri: None)
    monkeypatch.setattr(server.Generator, "load", staticmethod(lambda uri: _Fake(size=8, in_channels=9)))
    with pytest.raises(ConfigError, match=r"--max-bytes 500: cannot hold one 8x8x9 image \(its JSON takes at least 1152 bytes\)"):
        server.serve("models:/m@champion", "127.0.0.1", 0, max_bytes=500, decode_workers=0)
    server.check_fits_one_image(1152, 8, 9)  # the bound itself is accepted
