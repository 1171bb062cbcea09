"""Shared services that do not answer: one line naming the URI, in bounded time, no traceback."""
import importlib.util
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from mrisynth.errors import ServiceError
from mrisynth.io import tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with block ends: nothing listens there


def test_unreachable_tracking_server_is_one_line_naming_it():
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    with pytest.raises(ServiceError) as caught:
        tracking.probe_server(uri, timeout=5)
    assert time.perf_counter() - start < 6
    message = str(caught.value)
    assert uri in message and "\n" not in message and "make team-up" in message


def test_configure_bounds_mlflow_http_retries(monkeypatch):
    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ServiceError):
        tracking.configure_uri()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def _configure_in_a_stage(env: dict, cwd) -> tuple[subprocess.CompletedProcess, list[str], float]:
    """What every stage does first when it reaches MLflow (tracking.configure), under the stages' error
    handler, in a fresh process: (result, non-empty stderr lines, seconds)."""
    start = time.perf_counter()
    code = ("import sys; from mrisynth.stages import stage_main; from mrisynth.io import tracking; "
            "stage_main(lambda: tracking.configure('mrisynth') and 0)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
    return out, [line for line in out.stderr.splitlines() if line.strip()], time.perf_counter() - start


def test_a_stage_pointed_at_a_dead_server_exits_2_with_one_line(tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}", "MRISYNTH_WATCH_LAUNCHER": "0"}
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    out, lines, seconds = _configure_in_a_stage(env, tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: MLflow tracking server http://127.0.0.1:"), out.stderr
    assert seconds < 45


def test_a_stage_pointed_at_a_dead_object_store_exits_2_with_one_line(tmp_path):
    """The team's artifact store (MLFLOW_S3_ENDPOINT_URL) down: the stage stops at its start, not mid-upload."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MLFLOW_S3_ENDPOINT_URL": endpoint, "MRISYNTH_WATCH_LAUNCHER": "0"}
    out, lines, seconds = _configure_in_a_stage(env, tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: S3 object store (MLFLOW_S3_ENDPOINT_URL) {endpoint} did not answer"), out.stderr
    assert "MLFLOW_S3_ENDPOINT_URL" in lines[0] and "make team-up" in lines[0]
    assert seconds < 45
    assert not any(tmp_path.iterdir())  # nothing written: no store, no run


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="no PostgreSQL driver (psycopg2) installed")
def test_unreachable_optuna_database_is_one_line_naming_it():
    from mrisynth.stages.tune import storage

    url = f"postgresql+psycopg2://user:secret@127.0.0.1:{_closed_port()}/optuna"
    start = time.perf_counter()
    with pytest.raises(ServiceError) as caught:
        storage(url)
    message = str(caught.value)
    assert "127.0.0.1" in message and "secret" not in message and "\n" not in message
    assert time.perf_counter() - start < 40


def test_a_server_that_answers_at_all_counts_as_up():
    """401 behind an authenticating proxy, or 404 under a path prefix: the server is there."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracking.probe_server(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)  # no error
    finally:
        server.shutdown()
        server.server_close()


def test_a_stage_run_with_system_metrics_prints_no_monitor_chatter(tmp_path):
    """MLflow's system-metrics monitor announces its start and stop at INFO on every stage run: nothing a
    user can act on, so it is silenced (the run still records the metrics)."""
    code = (
        "import mlflow\n"
        "from mrisynth.io import tracking\n"
        "mlflow.set_experiment('quiet')\n"
        "with tracking.stage_run('s', system_metrics=True) as run:\n"
        "    rid = run.run_id\n"
        "print('RUN', rid)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "RUN " in r.stdout
    assert "system metrics" not in (r.stdout + r.stderr).lower(), r.stderr
