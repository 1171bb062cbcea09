"""The served champion (`mrisynth serve`): answers, input checks with short messages, oversized requests
refused at once while the server stays up."""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _start_server(trained, *extra) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mrisynth.cli", "serve", "--model", "models:/promo-generator@champion",
                               "--port", str(port), *map(str, extra)], cwd=trained, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None:
                pytest.fail(server.stdout.read())
            time.sleep(1)
    server.kill()
    pytest.fail("server did not start")


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_served_champion_answers_and_rejects(champion, trained):
    from mrisynth.io import arrays

    server, base = _start_server(trained, "--max-batch", 4)
    try:
        val = arrays.load_split(trained / "work" / "preprocessed", "val")
        url = f"{base}/invocations"
        status, body = _post(url, {"inputs": val.conditioning[:1].tolist()})
        assert status == 200, body
        images = np.asarray(body["predictions"])
        assert images.shape == (1, 64, 64, 4) and 0 <= images.min() and images.max() <= 1
        assert np.all(images[0][val.conditioning[0, ..., 3] == 0] == 0)  # nothing outside the brain
        status, body = _post(url, {"inputs": val.conditioning[0].tolist()})  # one (S, S, 4) image: one image, not S
        assert status == 200 and np.asarray(body["predictions"]).shape == (1, 64, 64, 4), body

        bad_values = val.conditioning[:1].copy()
        bad_values[0, 0, 0, 0] = 0.5
        for payload, expected in (
            ({"inputs": bad_values.tolist()}, "expected only 0 and 1"),
            ({"inputs": np.zeros((1, 32, 32, 4)).tolist()}, "shape"),
            ({"inputs": [["a", "b"]]}, "expected numbers"),
            ({"wrong": 1}, "key 'inputs'"),
            ({"instances": []}, "missing 'inputs'"),
            ({"inputs": []}, "'inputs' is empty"),
        ):
            status, body = _post(url, payload)
            assert status == 400, (status, body)
            assert expected in body.get("message", "") and len(body["message"]) < 300  # short, no input dump
            assert "Traceback" not in json.dumps(body)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    # one access-log line per request (method, path, status, ms), never the payload
    assert re.search(r"^GET /ping 200 \d+\.\d ms$", output, re.M), output[-2000:]
    assert len(re.findall(r"^POST /invocations 200 \d+\.\d ms$", output, re.M)) == 2, output[-2000:]
    assert len(re.findall(r"^POST /invocations 400 \d+\.\d ms$", output, re.M)) == 6, output[-2000:]
    assert "[[" not in output and "inputs" not in output


def test_oversized_requests_are_refused_at_once_and_the_server_stays_up(champion, trained):
    from mrisynth.io import arrays

    server, base = _start_server(trained, "--max-batch", 2)
    try:
        url = f"{base}/invocations"
        val = arrays.load_split(trained / "work" / "preprocessed", "val")
        one = {"inputs": val.conditioning[:1].tolist()}
        assert _post(url, one)[0] == 200
        before = _rss_mb(server.pid)
        # a 25 MB body is over the byte limit: 413 before the body is read, with or without Expect: 100-continue
        port = int(base.rsplit(":", 1)[1])
        for expect in ("Expect: 100-continue\r\n", ""):
            started = time.time()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall((f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Content-Length: 25000000\r\n{expect}\r\n").encode())  # headers only: the body never comes
                chunks = []
                while chunk := conn.recv(65536):  # the server closes the connection after its answer
                    chunks.append(chunk)
                reply = b"".join(chunks).decode()
            assert reply.startswith("HTTP/1.1 413") and "exceeds the limit" in reply, reply
            assert time.time() - started < 10
        # the client sends the whole 25 MB anyway: the server never reads it, its memory does not grow
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            try:
                conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 25000000\r\n\r\n" + b"[" * 25_000_000)
            except OSError:  # the server answered 413 and closed: the rest of the body is refused
                pass
        assert _rss_mb(server.pid) - before < 20
        # three images fit the byte limit but not the batch limit
        status, body = _post(url, {"inputs": np.zeros((3, 64, 64, 4)).tolist()})
        assert status == 413 and "limit is 2" in body["message"]
        assert _rss_mb(server.pid) - before < 50  # the refused work never happened
        assert _post(url, one)[0] == 200  # and the next normal request is served
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_slow_senders_cannot_stall_the_server_and_bad_json_is_400(champion, trained):
    from mrisynth.io import arrays

    server, base = _start_server(trained, "--body-timeout", 6)
    port = int(base.rsplit(":", 1)[1])
    slow = []
    try:
        url = f"{base}/invocations"
        one = {"inputs": arrays.load_split(trained / "work" / "preprocessed", "val").conditioning[:1].tolist()}
        assert _post(url, one)[0] == 200
        for _ in range(3):  # more slow senders than prediction slots: each announces 100 kB and sends a byte now and then
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
            slow.append(conn)
        time.sleep(1)
        for conn in slow:
            conn.sendall(b"[")
        started = time.time()
        assert _post(url, one)[0] == 200
        assert time.time() - started < 5  # served while the slow bodies are still arriving
        for conn in slow:  # within the body deadline (6 s) each slow sender gets 408 and is closed
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 6 s" in reply, reply[:300]
        # not numbers, or absurd nesting: 400 with a short message, the server stays up
        for body in (json.dumps({"inputs": [[[["0"] * 4] * 64] * 64]}), json.dumps({"inputs": [[[[True] * 4] * 64] * 64]}),
                     '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"):
            request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=60)
            assert err.value.code == 400 and len(err.value.read()) < 300
        assert _post(url, one)[0] == 200
    finally:
        for conn in slow:
            conn.close()
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output and "RecursionError" not in output


def test_request_bodies_share_a_memory_budget():
    from types import SimpleNamespace

    from mrisynth.inference.server import BODY_BUDGET, Service

    service = Service(SimpleNamespace(size=64, in_channels=4, predict_checked=lambda batch: batch), max_batch=2, max_bytes=1000)
    assert all(service.reserve(1000) for _ in range(BODY_BUDGET))
    assert not service.reserve(1)  # a further body would overflow: 503 at once
    service.release(1000)
    assert service.reserve(1000) and not service.reserve(1)


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_rows():
    import threading

    from mrisynth.inference.server import MicroBatcher

    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        time.sleep(0.05)  # a model call: requests arriving meanwhile queue up for the next one
        return batch * 2

    batcher = MicroBatcher(predict, max_batch=4, wait_s=0.02)
    requests = [np.full((n, 2, 2, 1), float(i)) for i, n in enumerate([1, 1, 2, 1, 3, 1, 1, 2])]
    results = [None] * len(requests)

    def send(i):
        results[i] = batcher.predict(requests[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(np.array_equal(result, request * 2) for result, request in zip(results, requests))  # own rows, in order
    assert sum(sizes) == sum(len(r) for r in requests) and max(sizes) <= 4
    assert batcher.calls == len(sizes) < len(requests)  # merged: fewer model calls than requests

    def failing(batch):
        raise ValueError("model failed")

    broken = MicroBatcher(failing, max_batch=4)
    with pytest.raises(ValueError, match="model failed"):
        broken.predict(np.zeros((1, 2, 2, 1)))
    assert broken.calls == 1


def test_the_batcher_waits_for_requests_being_decoded_and_not_for_abandoned_ones():
    """A request whose body is in and is being decoded (`admit`) joins the model call of a request that
    is already queued, even when it takes longer than `wait_s`; one that fails validation (leaves the
    `with` block without rows) releases the batcher at once instead of holding it for `decode_wait_s`."""
    import threading

    from mrisynth.inference.server import MicroBatcher

    sizes = []
    batcher = MicroBatcher(lambda batch: sizes.append(len(batch)) or batch + 1, max_batch=4, wait_s=0.001, decode_wait_s=60.0)
    decoded, results = threading.Event(), {}

    late_admission = batcher.admit()  # both counted before either thread runs: no race with the batcher

    def decoding_request():
        with late_admission:
            decoded.wait(timeout=30)  # "decoding" until the queued request is in
            results["late"] = late_admission.predict(np.full((2, 1, 1, 1), 5.0))

    with batcher.admit() as admission:
        late = threading.Thread(target=decoding_request)
        late.start()
        early = threading.Thread(target=lambda: results.setdefault("early", admission.predict(np.zeros((1, 1, 1, 1)))))
        early.start()
        early.join(timeout=0.2)
        assert early.is_alive() and sizes == []  # queued, and the batcher waits for the request being decoded
        decoded.set()
        early.join(timeout=30)
        late.join(timeout=30)
    assert sizes == [3] and batcher.calls == 1  # one model call for both
    assert np.array_equal(results["early"], np.ones((1, 1, 1, 1))) and np.array_equal(results["late"], np.full((2, 1, 1, 1), 6.0))

    abandoned = threading.Event()

    invalid_admission = batcher.admit()

    def invalid_request():
        with invalid_admission:
            abandoned.wait(timeout=30)  # validation fails: the block ends without rows

    invalid = threading.Thread(target=invalid_request)
    invalid.start()
    done = threading.Thread(target=lambda: results.setdefault("alone", batcher.predict(np.zeros((1, 1, 1, 1)))))
    done.start()
    done.join(timeout=0.2)
    assert done.is_alive()  # still waiting for the request being decoded
    abandoned.set()
    done.join(timeout=30)  # far below decode_wait_s: released when the invalid request left
    invalid.join(timeout=30)
    assert not done.is_alive() and sizes == [3, 1]

    eager = MicroBatcher(lambda batch: sizes.append(len(batch)) or batch, max_batch=4, wait_s=0.0, decode_wait_s=60.0)
    with eager.admit():  # --batch-wait-ms 0: no waiting, not even for a request being decoded
        lone = threading.Thread(target=lambda: results.setdefault("eager", eager.predict(np.zeros((1, 1, 1, 1)))))
        lone.start()
        lone.join(timeout=30)
        assert not lone.is_alive() and sizes == [3, 1, 1]


def test_decode_workers_answer_like_the_request_thread_and_survive_a_killed_worker(capfd):
    """Decoding in worker processes (`serve`'s default) gives the same arrays and the same error answers
    as decoding in the request's thread; a killed worker costs no request: it is decoded in its thread
    and new workers take over."""
    import os
    import signal

    from mrisynth.inference import decoding
    from mrisynth.inference.server import Service

    bodies = [json.dumps({"inputs": np.zeros((2, 8, 8, 4)).tolist()}).encode(),  # valid: (2, 8, 8, 4)
              json.dumps({"instances": np.eye(4)[np.zeros((8, 8), int)].tolist()}).encode(),  # one (S, S, 4) image
              b"{not json", json.dumps({"inputs": [[[["0"] * 4] * 8] * 8]}).encode(), b'{"inputs": [true]}',
              json.dumps({"inputs": np.full((1, 8, 8, 4), 0.5).tolist()}).encode(),  # values: 400
              json.dumps({"inputs": np.zeros((3, 8, 8, 4)).tolist()}).encode(),  # over max_batch: 413
              json.dumps({"inputs": np.zeros((1, 9, 8, 4)).tolist()}).encode(), json.dumps({"inputs": []}).encode()]

    def answer(service, body):
        try:
            return service.decode(body)
        except decoding.RequestError as exc:
            return exc.status, exc.message

    in_thread, pooled = Service(_FakeGenerator(), max_batch=2), Service(_FakeGenerator(), max_batch=2, decode_workers=2)
    try:
        for body in bodies:
            ours, theirs = answer(pooled, body), answer(in_thread, body)
            if isinstance(theirs, tuple):
                assert ours == theirs and theirs[0] in (400, 413), (body[:40], ours, theirs)
            else:
                assert ours.dtype == np.float32 and np.array_equal(ours, theirs) and theirs.ndim == 4
        victim = pooled.decoders._pool.submit(decoding.worker_pid).result()
        assert victim != os.getpid()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "a decode worker died" not in capfd.readouterr().err:  # until a request meets the broken pool
            assert time.monotonic() < deadline, "the killed worker was never noticed"
            assert np.array_equal(answer(pooled, bodies[0]), answer(in_thread, bodies[0]))  # every request answered
            time.sleep(0.05)
        assert np.array_equal(answer(pooled, bodies[1]), answer(in_thread, bodies[1]))  # by the new workers
        assert victim not in pooled.decoders._pool._processes and len(pooled.decoders._pool._processes) == 2  # new workers
    finally:
        pooled.close()


def test_decode_workers_end_with_their_server_even_when_it_is_killed():
    """SIGKILL leaves a server no time to stop its decode workers: they notice and end themselves."""
    import os
    import signal

    script = ("from mrisynth.inference.server import DecodePool\n"
              "if __name__ == '__main__':\n"
              "    pool = DecodePool(2)\n"
              "    print(*sorted(pool._pool._processes), flush=True)\n"
              "    import time; time.sleep(600)\n")
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in server.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    finally:
        server.kill()
        server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"decode workers {workers} outlived their killed server"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_failing_model_is_a_short_500_and_the_server_stays_up(capfd):
    """An unexpected failure while rendering (not the request's fault) is answered 500 with a short JSON
    message (never a traceback or the input); the cause goes to the server's stderr; the next request is answered."""
    import threading
    from http.server import ThreadingHTTPServer

    from mrisynth.inference.server import Service

    class Flaky(_FakeGenerator):
        calls = 0

        def predict_checked(self, batch):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("out of memory in a kernel")
            return super().predict_checked(batch)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Service(Flaky(), max_batch=2).handler())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/invocations"
    try:
        status, body = _post(url, {"inputs": np.zeros((1, 8, 8, 4)).tolist()})
        assert status == 500 and body["error_code"] == "INTERNAL_SERVER_ERROR" and "Traceback" not in json.dumps(body), body
        status, body = _post(url, {"inputs": np.zeros((1, 8, 8, 4)).tolist()})
        assert status == 200 and np.asarray(body["predictions"]).shape == (1, 8, 8, 4)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "RuntimeError: out of memory in a kernel" in capfd.readouterr().err


class _FakeGenerator:
    """A stand-in for served_model.Generator: 8 x 8 pixels, 4 channels in and out, no TensorFlow."""

    size, in_channels, channels, source = 8, 4, 4, "fake"

    def predict_checked(self, batch):  # the server's model call (rows already validated by its decoder)
        return np.zeros(batch.shape[:3] + (self.channels,), np.float32)


def test_missing_or_empty_inputs_are_named_and_every_request_is_logged(capfd):
    """`{"instances": []}` says 'missing inputs' (not "found shape (0,)"), an empty 'inputs' says so; the
    'instances' alias still renders; one stderr line per request: method, path, status, ms, no payload."""
    import threading
    from http.server import ThreadingHTTPServer

    from mrisynth.inference.server import Service

    class Server(ThreadingHTTPServer):
        daemon_threads = False  # server_close() waits for every handler (and its log line)

    httpd = Server(("127.0.0.1", 0), Service(_FakeGenerator(), max_batch=2).handler())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        for payload, expected in (({"instances": []}, "missing 'inputs'"), ({"inputs": []}, "'inputs' is empty"),
                                  ({"conditioning": []}, "missing 'inputs'"), ({"wrong": [1]}, "missing 'inputs'")):
            status, body = _post(f"{url}/invocations", payload)
            assert status == 400 and expected in body["message"] and "(0,)" not in body["message"], body
        for key in ("inputs", "instances"):
            status, body = _post(f"{url}/invocations", {key: np.zeros((1, 8, 8, 4)).tolist()})
            assert status == 200 and np.asarray(body["predictions"]).shape == (1, 8, 8, 4), body
        status, body = _post(f"{url}/invocations", {"inputs": np.full((1, 8, 8, 4), 0.5).tolist()})
        assert status == 400 and "expected only 0 and 1" in body["message"]  # validation unchanged
        status, body = _post(f"{url}/invocations", {"inputs": np.zeros((3, 8, 8, 4)).tolist()})
        assert status == 413 and "limit is 2" in body["message"]  # limits unchanged
        with urllib.request.urlopen(f"{url}/ping", timeout=30) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/nowhere?x=1", timeout=30)
        assert err.value.code == 404
    finally:
        httpd.shutdown()
        httpd.server_close()
    lines = capfd.readouterr().err.splitlines()
    expected = ["POST /invocations 400"] * 4 + ["POST /invocations 200"] * 2 + ["POST /invocations 400", "POST /invocations 413",
                                                                                "GET /ping 200", "GET /nowhere?x=1 404"]
    assert [line.rsplit(" ", 2)[0] for line in lines] == expected, lines
    assert all(re.fullmatch(r".* \d+\.\d ms", line) for line in lines), lines
    assert not any("[" in line or "inputs" in line for line in lines)  # never the payload
