"""The team stack's servers (mrisynth.ops.team): PostgreSQL 15, SeaweedFS (S3) and the MLflow tracking
server, each started as a session leader with its log and pid file (mrisynth.ops.processes) and waited
for until it answers; their URIs; the tools they run (PostgreSQL binaries, console scripts)."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mrisynth.ops.processes import HOST, Paths, TeamError, _spawn, _wait, _write_private

BUCKETS = ("mlflow", "dvc")
DATABASES = ("mlflow", "optuna")
REGION = "us-east-1"

def timeout() -> float:
    return float(os.environ.get("MRISYNTH_TEAM_TIMEOUT", "60"))


def pg_bin() -> Path:
    return Path(os.environ.get("MRISYNTH_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (weed, mlflow, dvc), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise TeamError(f"team: `{name}` not found beside {sys.executable} or on PATH; run `make setup` (requirements.lock has it)")
    return found


def uris(state: dict) -> dict[str, str]:
    p = state["ports"]
    return {
        "postgres": f"postgresql://{HOST}:{p['postgres']}",
        "weed": f"http://{HOST}:{p['s3']}",
        "mlflow": f"http://{HOST}:{p['mlflow']}",
    }


def env_vars(state: dict, root: Path) -> dict[str, str]:
    """What a client needs: `source env.sh` exports these."""
    p = state["ports"]
    auth = f"{state['pg_user']}:{state['pg_password']}@{HOST}:{p['postgres']}"
    return {
        "MRISYNTH_TEAM_DIR": str(root),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{p['mlflow']}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{p['s3']}",
        "AWS_ENDPOINT_URL_S3": f"http://{HOST}:{p['s3']}",
        "AWS_ACCESS_KEY_ID": state["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": state["s3_secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "MRISYNTH_TUNE_STORAGE": f"postgresql+psycopg2://{auth}/optuna",
        "MRISYNTH_TEAM_MLFLOW_DB": f"postgresql+psycopg2://{auth}/mlflow",
    }


# ---------------------------------------------------------------- PostgreSQL
def _pg_identity(state: dict) -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run PostgreSQL binaries: as the current user, or - as root, which
    PostgreSQL refuses - as an unprivileged system user, created when missing."""
    if os.geteuid() != 0:
        return [], None, None
    name = os.environ.get("MRISYNTH_TEAM_PG_USER", "mrisynth")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise TeamError(f"team up: postgres: cannot create system user {name!r} ({made.stderr.strip()}); "
                            f"create it or run as a normal user") from None
        entry = pwd.getpwnam(name)
    prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]
    return prefix, entry.pw_uid, entry.pw_gid


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """The unprivileged PostgreSQL user must be able to enter every folder above its data folder."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        mode = st.st_mode
        ok = (mode & stat.S_IXOTH) or (st.st_uid == uid and mode & stat.S_IXUSR) or (st.st_gid == gid and mode & stat.S_IXGRP)
        if not ok:
            raise TeamError(f"team up: postgres runs as uid {uid}, which cannot enter {parent} (mode {oct(mode & 0o777)}); "
                            f"choose MRISYNTH_TEAM_DIR under a folder others may enter (e.g. /tmp or the repository)")


def _pg_run(prefix: list[str], args: list[str], log: Path, what: str) -> None:
    with open(log, "ab") as handle:
        done = subprocess.run(prefix + args, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout())
    if done.returncode != 0:
        raise TeamError(f"team up: postgres: {what} failed (exit {done.returncode}); see {log}")


def _start_postgres(paths: Paths, state: dict, limit: float) -> subprocess.Popen | None:
    port, log, uri = state["ports"]["postgres"], paths.log("postgres"), uris(state)["postgres"]
    binary = pg_bin()
    if not (binary / "postgres").exists():
        raise TeamError(f"team up: postgres: no server binaries in {binary} (apt-get install postgresql-15, or set MRISYNTH_PG_BIN)")
    prefix, uid, gid = _pg_identity(state)
    paths.pgsocket.mkdir(exist_ok=True)
    paths.pgsocket.chmod(0o700)  # --auth-local=trust: only the server's own user may reach the socket
    if uid is not None:
        paths.root.chmod(0o711)  # enter-only for the PostgreSQL user; state.json and env.sh stay 0600
        _check_traversable(paths.root, uid, gid)
        for folder in (paths.pgsocket, paths.pgdata):
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
            os.chown(folder, uid, gid)
    if not (paths.pgdata / "PG_VERSION").exists():
        pwfile = paths.root / ".pgpass.init"
        _write_private(pwfile, state["pg_password"] + "\n")
        if uid is not None:
            os.chown(pwfile, uid, gid)
        try:
            _pg_run(prefix, [str(binary / "initdb"), "-D", str(paths.pgdata), "-U", state["pg_user"], f"--pwfile={pwfile}",
                             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"], log, "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
    proc = _spawn(paths, "postgres", prefix + [str(binary / "postgres"), "-D", str(paths.pgdata), "-p", str(port),
                  "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={paths.pgsocket}",
                  "-c", "max_connections=100", "-c", "shared_buffers=32MB", "-c", "fsync=on"])
    ready = lambda: subprocess.run([str(binary / "pg_isready"), "-q", "-h", HOST, "-p", str(port)], timeout=5).returncode == 0  # noqa: E731
    _wait("postgres", uri, log, proc, ready, limit)
    for db in DATABASES:
        exists = subprocess.run([str(binary / "psql"), "-h", str(paths.pgsocket), "-p", str(port), "-U", state["pg_user"], "-d", "postgres",
                                 "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"], capture_output=True, text=True, timeout=30)
        if exists.returncode != 0:
            raise TeamError(f"team up: postgres ({uri}) does not answer queries ({exists.stderr.strip().splitlines()[-1:]}); see {log}")
        if exists.stdout.strip() != "1":
            _pg_run([], [str(binary / "createdb"), "-h", str(paths.pgsocket), "-p", str(port), "-U", state["pg_user"], db], log, f"createdb {db}")
    return proc


# ---------------------------------------------------------------- SeaweedFS (S3)
def _s3_client(state: dict):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=uris(state)["weed"], aws_access_key_id=state["s3_access_key"],
                        aws_secret_access_key=state["s3_secret_key"], region_name=REGION,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10))


def _start_weed(paths: Paths, state: dict, limit: float) -> subprocess.Popen:
    p, log, uri = state["ports"], paths.log("weed"), uris(state)["weed"]
    paths.weed.mkdir(exist_ok=True)
    identities = {"identities": [{"name": "mrisynth", "credentials": [{"accessKey": state["s3_access_key"], "secretKey": state["s3_secret_key"]}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    _write_private(paths.s3_config, json.dumps(identities, indent=2))
    cmd = [_tool("weed"), "server", f"-dir={paths.weed}", f"-ip={HOST}", f"-ip.bind={HOST}", "-master.telemetry=false", "-master.resumeState=false",
           f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.volumeSizeLimitMB=64",
           f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=50", "-volume.preStopSeconds=1",
           "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}", f"-filer.localSocket={paths.weed / 'filer.sock'}",
           "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={paths.s3_config}",
           f"-s3.localSocket={paths.weed / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    tmp = paths.weed / "tmp"  # weed's own temporary files (its gRPC sockets still go to /tmp: removed by down)
    tmp.mkdir(exist_ok=True)
    proc = _spawn(paths, "weed", cmd, env=os.environ | {"TMPDIR": str(tmp)})
    client = _s3_client(state)

    def ready() -> bool:
        from botocore.exceptions import ClientError

        for bucket in BUCKETS:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        probe = f"team-probe-{os.getpid()}"
        client.put_object(Bucket="dvc", Key=probe, Body=b"ok")  # a write reaches a volume server
        client.delete_object(Bucket="dvc", Key=probe)
        return True

    _wait("weed (S3)", uri, log, proc, ready, limit)
    return proc


# ---------------------------------------------------------------- MLflow
def _start_mlflow(paths: Paths, state: dict, limit: float) -> subprocess.Popen:
    p, log, uri = state["ports"], paths.log("mlflow"), uris(state)["mlflow"]
    env = os.environ.copy()
    env.update({k: v for k, v in env_vars(state, paths.root).items() if k.startswith(("AWS_", "MLFLOW_S3"))})
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # the password goes to libpq through a 0600 password file, not onto the command line (`ps`, the log)
    pgpass = paths.root / "mlflow.pgpass"
    _write_private(pgpass, f"{HOST}:{p['postgres']}:mlflow:{state['pg_user']}:{state['pg_password']}\n")
    env["PGPASSFILE"] = str(pgpass)
    backend = f"postgresql+psycopg2://{state['pg_user']}@{HOST}:{p['postgres']}/mlflow"
    cmd = [_tool("mlflow"), "server", "--backend-store-uri", backend,
           "--artifacts-destination", "s3://mlflow", "--host", HOST, "--port", str(p["mlflow"]),
           "--workers", os.environ.get("MRISYNTH_TEAM_MLFLOW_WORKERS", "2")]
    proc = _spawn(paths, "mlflow", cmd, env=env)

    def ready() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=3) as response:
            return response.status == 200

    _wait("mlflow", uri, log, proc, ready, limit)
    return proc


