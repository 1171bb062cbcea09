"""Process supervision for the team stack (`mrisynth team`, mrisynth.ops.team): the state folder's
layout, free ports, servers spawned as session leaders with pid files (pid + start time, so a reused pid
is not mistaken for ours), stopping whole process groups, waiting until a server answers."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mrisynth.errors import MrisynthError

COMPONENTS = ("postgres", "weed", "mlflow")  # start order; `down` stops in reverse
HOST = "127.0.0.1"


class TeamError(MrisynthError):
    """A component of the team stack failed; the message is one line naming it, its URI and its log."""



def team_dir() -> Path:
    return Path(os.environ.get("MRISYNTH_TEAM_DIR", ".team")).expanduser().resolve()



@dataclass
class Paths:
    root: Path

    @property
    def state(self) -> Path: return self.root / "state.json"
    @property
    def env(self) -> Path: return self.root / "env.sh"
    @property
    def logs(self) -> Path: return self.root / "logs"
    @property
    def pids(self) -> Path: return self.root / "pids"
    @property
    def pgdata(self) -> Path: return self.root / "postgres"
    @property
    def pgsocket(self) -> Path: return self.root / "pgsocket"
    @property
    def weed(self) -> Path: return self.root / "weed"
    @property
    def s3_config(self) -> Path: return self.root / "s3.json"

    def log(self, component: str) -> Path: return self.logs / f"{component}.log"
    def pid(self, component: str) -> Path: return self.pids / f"{component}.pid"


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (sockets held until all are chosen)."""
    held, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind((HOST, 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in taken and port not in ports:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _answers(port: int, wait: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=wait):
            return True
    except OSError:
        return False


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def _read_pid(paths: Paths, component: str) -> int | None:
    """The pid recorded for `component` if that very process (same start time) still runs."""
    try:
        pid_text, start = paths.pid(component).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if _starttime(pid) == start else None


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def stack_processes(root: Path | None = None) -> list[int]:
    """Running processes of the stack: members of the recorded process groups (each server is started as
    a session leader), and any process whose command line names the team folder."""
    paths = Paths(root or team_dir())
    found = set()
    for component in COMPONENTS:
        try:
            found.update(_group_members(int(paths.pid(component).read_text().split()[0])))
        except (OSError, ValueError, IndexError):
            pass
    needle = str(paths.root).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if needle in cmdline and _is_stack_program(cmdline) and _starttime(int(entry.name)):
                    found.add(int(entry.name))
            except OSError:
                pass
    return sorted(found)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by the owner only from the moment it exists (credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


STACK_PROGRAMS = (b"postgres", b"weed", b"mlflow", b"gunicorn", b"uvicorn", b"huey_consumer")


def _is_stack_program(cmdline: bytes) -> bool:
    """A server of the stack (not, say, `tail -f .team/logs/mlflow.log` or a shell that sourced env.sh)."""
    argv = [a for a in cmdline.split(b"\0") if a]
    if not argv:
        return False
    if os.path.basename(argv[0]).startswith(STACK_PROGRAMS):  # postgres renames its children "postgres: ..."
        return True
    return any(os.path.basename(a) in STACK_PROGRAMS or a.startswith(b"mlflow.server") for a in argv[1:4])


def _spawn(paths: Paths, component: str, cmd: list[str], env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    log = open(paths.log(component), "ab")
    log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd or paths.root, start_new_session=True)
    finally:
        log.close()
    time.sleep(0.05)
    paths.pid(component).write_text(f"{proc.pid} {_starttime(proc.pid) or 0}\n")
    return proc


def _stop(paths: Paths, component: str, wait: float = 20.0) -> int | None:
    """Stop a component's process group (postgres: fast shutdown first). Returns the pid stopped, if any."""
    pid = _read_pid(paths, component)
    pgid = None
    try:
        pgid = int(paths.pid(component).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if pid is not None:
        try:
            os.kill(pid, signal.SIGINT if component == "postgres" else signal.SIGTERM)
            if component != "postgres":
                os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _starttime(pid):
            time.sleep(0.1)
    if pgid is not None and pid is not None:  # what is left of our group; a stale pid file (pid is None) names no group of ours
        for _ in range(50):
            if not _group_members(pgid):
                break
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
    paths.pid(component).unlink(missing_ok=True)
    return pid


def _wait(component: str, uri: str, log: Path, proc: subprocess.Popen | None, ready, limit: float) -> None:
    deadline = time.monotonic() + limit
    last = ""
    while True:
        if proc is not None and proc.poll() is not None:
            raise TeamError(f"team up: {component} ({uri}) exited with code {proc.returncode} during start; see {log}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not ready yet"
            last = f" (last: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if time.monotonic() > deadline:
            raise TeamError(f"team up: {component} ({uri}) did not answer within {limit:.0f} s{last}; see {log}")
        time.sleep(0.25)


