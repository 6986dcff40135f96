"""A local cluster's state directory: what runs, where, and how to stop it.

Layout of ``<base>/<cluster_name>/`` (base: $CLIPPER_STATE_DIR, default ~/.clipper; the base
also holds .start.lock, held by a start or a recovery of any cluster until it serves):
  cluster.json     ports and settings, written by the client that started the cluster
  supervisor.json  the supervisor's pid and start time
  processes.json   every running process (role, pid, start time), written by the supervisor
  replicas.json    the wanted model replicas, written by clients, applied on SIGHUP
  supervisor.lock  held by the one running supervisor
  stopping         present while the cluster is being stopped: nothing may replace its supervisor
  logs/ redis/ models/ pythonpath/ (links to the clipper packages, for replicas)
  replica-metrics/ each replica's metrics (clipper.container.metrics)
Processes are identified by pid *and* start time, so a recycled pid is never signalled.
Every process of a cluster (the supervisor and its watchdog too) has CLIPPER_CLUSTER_DIR in
its environment, which finds them all even when the directory is gone.
"""
import contextlib
import fcntl
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import psutil

from clipper.files import write_atomically
from clipper.launch import READY_POLL_SECONDS

CLUSTER_FILE = "cluster.json"
SUPERVISOR_FILE = "supervisor.json"
PROCESSES_FILE = "processes.json"
REPLICAS_FILE = "replicas.json"
LOCK_FILE = "lock"
SUPERVISOR_LOCK_FILE = "supervisor.lock"
START_LOCK_FILE = ".start.lock"       # in the state directory: held by a cluster's start
STOPPING_FILE = "stopping"
PACKAGE_PATH_DIR = "pythonpath"       # our packages alone, for replicas in other interpreters
REPLICA_METRICS_DIR = "replica-metrics"
MARKER_ENV = "CLIPPER_CLUSTER_DIR"
REDIS_SOCKET_FILE = "redis.sock"
# How the supervisor's line in a process's log before each start begins (log_start_line):
# a log's tail shows the last run.
LOG_START_PREFIX = "--- clipper: "
GONE_POLL_SECONDS = 0.005     # how often a stop looks whether its processes are gone
# How long a supervisor's successor may take to appear: the watchdog looks every 0.2 s and
# the new supervisor starts in under a second (README: 0.2 to 0.4 s).
TAKEOVER_SECONDS = 5.0
# What redis-server (or valkey-server) shows as its title: "<binary> unixsocket:<cluster dir>/redis.sock".
_REDIS_TITLE = re.compile(r"\S*(?:redis|valkey)-server unixsocket:(\S+)/" + re.escape(REDIS_SOCKET_FILE) + r"\b")


def default_base_dir() -> Path:
    return (Path.home() / ".clipper").resolve()


def base_dir() -> Path:
    """The state directory, absolute (the cluster's processes run in their own directory,
    where a relative path would name another place) and with its symbolic links resolved: a
    link is checked (base_problem) where it points once, at a start, and whoever may change
    it (its owner, in a shared /tmp) could point it later at a directory of theirs, whose
    files would then choose the programs the running supervisor starts."""
    return Path(os.environ.get("CLIPPER_STATE_DIR") or default_base_dir()).expanduser().resolve()


@contextlib.contextmanager
def start_lock() -> Iterator[None]:
    """Held by a start (or a recovery) from its look for a running cluster until the cluster
    serves, so that two starts of one cluster at once cannot take each other's processes for
    the leftovers of a crash, and a start on the ports of one still starting finds them taken.
    One lock for every cluster: starts take seconds, and different names may share ports."""
    base = base_dir()
    if base.exists() and not base.is_dir():
        raise NotADirectoryError(f"the state directory {base} (CLIPPER_STATE_DIR) is not a directory")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Checked once it exists (another user may have made it first): whoever owns it or may
    # write to it could hold the lock for good, or put a link there that has us create
    # (as this user) whatever file it names.
    problem = base_problem(base)
    if problem:
        raise PermissionError(f"Cannot use the state directory {base}, which {problem}; set "
                              "CLIPPER_STATE_DIR to a directory of your own (the default is ~/.clipper)")
    if base == default_base_dir() and base.stat().st_mode & 0o077:
        base.chmod(0o700)      # ours (an older version, or the umask, opened it): its names are the user's
    with open(base / START_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_problem(base: Path) -> Optional[str]:
    """Why an existing state directory is not one to use (what follows "which"), or None.
    What is in it says which programs the supervisor runs (the wanted replicas), and it
    holds the start lock: nobody else may be able to put anything there."""
    if not base.is_dir():
        return "is not a directory (CLIPPER_STATE_DIR?)"
    status = base.stat()
    if status.st_uid != os.getuid():
        return "belongs to another user (CLIPPER_STATE_DIR?)"
    if status.st_mode & 0o022:
        return f"others may write to (make it yours alone: chmod go-w {base})"
    return None


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return default


def write_json(path: Path, document) -> None:
    """Atomic: readers see the old or the new document, never half of one."""
    write_atomically(path, json.dumps(document, indent=2, sort_keys=True).encode())


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> "ProcessRecord":
        return cls(pid, psutil.Process(pid).create_time())

    def process(self) -> Optional[psutil.Process]:
        """The live process this record names, or None (exited, or pid reused; see still_running)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01:
                return None
            return process if still_running(process) else None
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def as_dict(self) -> dict:
        return {"pid": self.pid, "create_time": self.create_time}


class ClusterDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def exists(self) -> bool:
        return (self.path / CLUSTER_FILE).exists()

    def not_ours(self) -> Optional[str]:
        """Why this path is not a cluster's own state directory, or None (it is one, or
        nothing is there): a start or a stop deletes what is there, so a place the user
        made (a folder of the same name in a shared CLIPPER_STATE_DIR) is never taken."""
        base = self.path.parent
        problem = base_problem(base) if base.exists() else None
        if problem:
            return f"is in {base}, which {problem}"
        if self.path.is_symlink():
            return "is a symbolic link"
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            return "is not a directory"
        if self.path.stat().st_uid != os.getuid():
            return "belongs to another user"
        if self.exists():
            return None
        foreign = sorted(entry.name for entry in self.path.iterdir() if not _is_cluster_entry(entry))
        if foreign:
            return f"holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''} and no {CLUSTER_FILE}"
        return None

    def create(self, settings: dict) -> None:
        def private_directory(directory: Path) -> None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)     # private even if it existed: it may hold the admin token
        private_directory(self.path)
        write_json(self.path / CLUSTER_FILE, settings)     # first: from now on it is a cluster's
        for directory in (self.logs, self.path / "redis", self.path / "models", self.path / REPLICA_METRICS_DIR):
            private_directory(directory)
        write_json(self.path / REPLICAS_FILE, {"generation": 0, "models": {}})

    def settings(self) -> dict:
        return read_json(self.path / CLUSTER_FILE, {})

    # ---- supervisor ----
    def supervisor(self) -> Optional[ProcessRecord]:
        record = read_json(self.path / SUPERVISOR_FILE)
        return ProcessRecord(record["pid"], record["create_time"]) if record else None

    def set_supervisor(self, record: ProcessRecord) -> None:
        write_json(self.path / SUPERVISOR_FILE, record.as_dict())

    def is_running(self) -> bool:
        return self.live(self.supervisor()) is not None

    def live(self, record: Optional[ProcessRecord]) -> Optional[psutil.Process]:
        """The live process a record of this directory names, if it carries this cluster's
        marker: a record is only a file, and whoever could write it could name any process
        (to be signalled, or taken for a running cluster)."""
        process = record.process() if record else None
        try:
            return process if process and cluster_path_of(process) == str(self.path) else None
        except psutil.Error:
            return None

    def mark_stopping(self) -> None:
        """Mark the cluster as being stopped by this process (its pid and start time)."""
        with contextlib.suppress(OSError, psutil.Error):
            write_json(self.path / STOPPING_FILE, ProcessRecord.of(os.getpid()).as_dict())

    def is_stopping(self) -> bool:
        return (self.path / STOPPING_FILE).exists()

    def stop_under_way(self) -> bool:
        """Whether the process that marked the cluster as stopping still runs. One killed
        (kill -9) before it stopped the supervisor left a running cluster marked: the mark
        alone must not keep a watchdog from replacing the supervisor. A mark that names no
        process (an older one, empty) counts as a stop under way."""
        if not self.is_stopping():
            return False
        record = read_json(self.path / STOPPING_FILE)
        try:
            return ProcessRecord(int(record["pid"]), float(record["create_time"])).alive()
        except (TypeError, KeyError, ValueError):
            return True

    def forget_stop(self) -> None:
        """Remove the stop mark (one whose stopper is gone, when a watchdog takes over): kept,
        the running cluster still read as being stopped, so a change made while a later
        supervisor was replaced failed at once, and connect() did not recover it once crashed."""
        with contextlib.suppress(OSError):
            (self.path / STOPPING_FILE).unlink()

    # ---- processes ----
    def processes(self) -> List[dict]:
        return read_json(self.path / PROCESSES_FILE, {}).get("processes", [])

    def applied_generation(self) -> int:
        return read_json(self.path / PROCESSES_FILE, {}).get("generation", -1)

    def failing(self) -> Dict[str, dict]:
        """Processes that keep exiting soon after start: name -> failures, exit code."""
        return read_json(self.path / PROCESSES_FILE, {}).get("failing", {})

    def write_processes(self, generation: int, processes: List[dict], failing: Dict[str, dict]) -> None:
        write_json(self.path / PROCESSES_FILE,
                   {"generation": generation, "processes": processes, "failing": failing})

    # ---- wanted replicas ----
    def wanted_replicas(self) -> dict:
        return read_json(self.path / REPLICAS_FILE, {"generation": 0, "models": {}})

    @contextlib.contextmanager
    def editing_replicas(self) -> Iterator[Dict[str, dict]]:
        """Read-modify-write the wanted replicas under a lock, then tell the supervisor."""
        with open(self.path / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            document = self.wanted_replicas()
            yield document["models"]
            document["generation"] += 1
            write_json(self.path / REPLICAS_FILE, document)
        process = self.live(self.supervisor())
        if process:
            process.send_signal(signal.SIGHUP)

    def wait_applied(self, timeout: float) -> bool:
        """Wait until the supervisor has applied the latest wanted replicas. A supervisor
        that is gone may be in the middle of being replaced by its watchdog (which then
        applies them at its start): False only once none has come for TAKEOVER_SECONDS."""
        wanted = self.wanted_replicas()["generation"]
        now = time.monotonic()
        deadline, down_since = now + timeout, None
        while now < deadline:
            if self.applied_generation() >= wanted:
                return True
            if self.is_running():
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since > TAKEOVER_SECONDS or self.is_stopping():
                return False
            time.sleep(READY_POLL_SECONDS)
            now = time.monotonic()
        return False

    def log_tail(self, log_name: str, lines: int = 20) -> str:
        """The last lines of a process's log, of its last run only (its last start line on)."""
        try:
            text = (self.logs / f"{log_name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        last_lines = text.splitlines()[-lines:]
        starts = [i for i, line in enumerate(last_lines) if line.startswith(LOG_START_PREFIX)]
        return "\n".join(last_lines[starts[-1] + 1:] if starts else last_lines)


def log_start_line(name: str) -> str:
    """What the supervisor writes in a process's log just before it starts it."""
    return f"{LOG_START_PREFIX}{name} started at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n"


_CLUSTER_ENTRIES = frozenset((CLUSTER_FILE, SUPERVISOR_FILE, PROCESSES_FILE, REPLICAS_FILE, LOCK_FILE,
                              SUPERVISOR_LOCK_FILE, STOPPING_FILE, REDIS_SOCKET_FILE, PACKAGE_PATH_DIR,
                              REPLICA_METRICS_DIR, "logs", "redis", "models"))


def _is_cluster_entry(entry: Path) -> bool:
    """What a cluster's directory may hold without its cluster.json (a start that died
    before writing it): its files, and its directories while still empty (one holding
    anything is a user's, whatever its name)."""
    name = entry.name
    if entry.is_dir() and not entry.is_symlink():
        return name in _CLUSTER_ENTRIES and not any(entry.iterdir())
    return (name in _CLUSTER_ENTRIES or (name.startswith("rpc-") and name.endswith(".sock"))
            or (name.startswith(".") and name.endswith(".tmp")))


def clusters() -> List[ClusterDir]:
    base = base_dir()
    if not base.is_dir():
        return []
    return sorted((ClusterDir(path) for path in base.iterdir() if (path / CLUSTER_FILE).exists()),
                  key=lambda cluster: cluster.name)


def cluster_path_of(process: psutil.Process) -> Optional[str]:
    """The cluster directory a process belongs to, or None. redis-server rewrites its title
    over its environment, so our marker is gone from it: it is known by its socket path.
    Another user's process belongs to none of ours: its environment and title are its own to
    set, and root, who can read them, would have signalled it as one of the cluster's."""
    if process.uids().real != os.getuid():
        return None
    marker = process.environ().get(MARKER_ENV)
    if marker:
        return marker
    title = _REDIS_TITLE.match(" ".join(process.cmdline()))
    return title.group(1) if title else None


def processes_marked_with(cluster_path: Path) -> List[psutil.Process]:
    """Processes that belong to this cluster directory."""
    target = str(Path(cluster_path))
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or not still_running(process):
                continue
            if cluster_path_of(process) == target:
                found.append(process)
        except psutil.Error:
            continue
    return found


def cluster_processes(cluster: "ClusterDir") -> List[psutil.Process]:
    """Every live process of a cluster: whatever carries its marker (which needs no
    directory), and, in a directory of the user's own, what its records name (a model that
    sets its process title, as setproctitle does, may write over its marker). The records
    of a directory others could write to are not read: they would name any process whoever
    wrote them chose (closeClipper.py killed it)."""
    found = {process.pid: process for process in processes_marked_with(cluster.path)}
    if not cluster.not_ours():
        records = [cluster.supervisor()] + [ProcessRecord(r["pid"], r["create_time"]) for r in cluster.processes()]
        for process in (record.process() for record in records if record):
            if process is not None:
                found.setdefault(process.pid, process)
    return list(found.values())


def is_keeper(process: psutil.Process) -> bool:
    """A supervisor or its watchdog: what restarts the others, so what is stopped first."""
    with contextlib.suppress(psutil.Error):
        command = " ".join(process.cmdline())
        return "-m clipper supervisor" in command or "-m clipper.cluster.watchdog" in command
    return False


def orphan_cluster_paths() -> List[Path]:
    """Cluster directories named by running processes in the base dir, listed or not: its
    entries only, not deeper (there, another state directory's clusters may live)."""
    base = base_dir()
    paths = set()
    for process in psutil.process_iter():
        try:
            marker = cluster_path_of(process)
        except psutil.Error:
            continue
        if marker and Path(marker).parent == base:
            paths.add(Path(marker))
    return sorted(paths)


def terminate(processes: List[psutil.Process], grace: float) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace`` seconds."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    alive = _wait_gone(processes, grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(alive, 5)


def _wait_gone(processes: List[psutil.Process], timeout: float) -> List[psutil.Process]:
    """Those still running after ``timeout``. An exited process whose parent has not reaped it
    yet (a zombie: say, the supervisor of a script that still runs) is gone once its threads
    are, although psutil.wait_procs would wait for it until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [process for process in processes if still_running(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(GONE_POLL_SECONDS)


# A process stopped this long (SIGSTOP: frozen, not being debugged) is killed, so that it is
# replaced: it would answer no one, and never exit by itself.
FROZEN_SECONDS = 5.0


class FreezeWatch:
    """How long a process has been stopped, as seen by successive calls of ``seconds`` (a
    call about another process starts again from nought)."""

    def __init__(self):
        self.pid: Optional[int] = None
        self.since: Optional[float] = None

    def seconds(self, pid: int, now: float) -> float:
        try:
            stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            stopped = False
        if pid != self.pid or not stopped:
            self.pid, self.since = pid, None
        if stopped and self.since is None:
            self.since = now
        return 0.0 if self.since is None else now - self.since


def still_running(process: psutil.Process) -> bool:
    """Whether ``process`` runs, or is still exiting. A zombie whose parent has not reaped it
    has exited; but its main thread turns zombie first, while its other threads may still be
    exiting and holding its files, listening sockets included: gone is a zombie with one thread."""
    try:
        return process.is_running() and (process.status() != psutil.STATUS_ZOMBIE or process.num_threads() > 1)
    except psutil.Error:
        return False
