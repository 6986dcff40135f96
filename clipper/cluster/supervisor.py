"""Keeps one local cluster running: Redis, the two frontends and the model replicas.

Started detached (its own session) by LocalContainerManager, so the cluster outlives the
script that started it, as Clipper's Docker containers do. It restarts any process that
dies (Clipper did not), or that stays stopped (SIGSTOP) for FROZEN_SECONDS, applies the
wanted replicas on SIGHUP, records every process in processes.json, and on SIGTERM stops
everything: model replicas first, Redis last.

One supervisor at a time keeps a cluster (it holds supervisor.lock). A watchdog child takes
its place if it is killed; a supervisor that starts where processes of the cluster still
run (after that, or after a crash) adopts those it finds in processes.json and stops any
other process that carries the cluster's marker.
"""
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import psutil

from clipper import launch as recipe
from clipper.cluster import cluster_dir
from clipper.cluster.gpus import device_environment, pick_devices
from clipper.cluster.cluster_dir import FROZEN_SECONDS, MARKER_ENV, ClusterDir, FreezeWatch, ProcessRecord
from clipper.config import MANAGEMENT_FRONTEND, MODEL_CONTAINER, QUERY_FRONTEND, REDIS, Config
from clipper.launch import Launch
from clipper.redis_schema import is_dns_label
from clipper.signal_wakeup import SignalWakeup

log = logging.getLogger("clipper.supervisor")

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
LOOP_SECONDS = 0.1
# A process that ran at least this long before dying is restarted at once.
HEALTHY_RUN_SECONDS = 10.0
MAX_RESTART_DELAY = 5.0
WATCHDOG = "watchdog"
WATCHDOG_STOP_GRACE = 1.0
STRAY_STOP_GRACE = 2.0
STOP_POLL_SECONDS = 0.005
FREEZE_CHECK_SECONDS = 1.0
LOG_CHECK_SECONDS = 1.0       # how often the logs' sizes are looked at (Config.max_log_size)


class Adopted:
    """A process of the cluster that an earlier supervisor started: watched and stopped
    through psutil, with the part of subprocess.Popen's interface the supervisor uses.
    Its exit code is not ours to read: -1."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.pid = process.pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None and not cluster_dir.still_running(self.process):
            self.returncode = -1
        return self.returncode

    def terminate(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.process.kill()

    def wait(self, timeout: Optional[float] = None) -> int:
        try:
            self.process.wait(timeout)
        except psutil.TimeoutExpired:
            raise subprocess.TimeoutExpired(str(self.pid), timeout) from None
        except psutil.Error:
            pass
        self.returncode = -1
        return self.returncode


@dataclass(eq=False)
class Child:
    """One supervised process slot: what to run, and the process currently running it."""
    name: str                     # its log file name and its name in processes.json
    role: str
    command: List[str]
    env: Dict[str, str]
    stop_grace: float
    details: Dict[str, object] = field(default_factory=dict)
    process: Optional[subprocess.Popen] = None      # or Adopted
    started_at: float = 0.0
    failures: int = 0             # exits in a row that came too soon
    last_exit: Optional[int] = None
    restart_at: float = 0.0
    freeze: FreezeWatch = field(default_factory=FreezeWatch)

    def record(self) -> Optional[dict]:
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            created = ProcessRecord.of(self.process.pid).create_time
        except Exception:
            return None
        return {"role": self.role, "name": self.name, "pid": self.process.pid,
                "create_time": created, **self.details}


class Supervisor:
    def __init__(self, cluster: ClusterDir):
        self.cluster = cluster
        self.settings = cluster.settings()
        self.config = Config(**self.settings["config"])
        self.children: List[Child] = []
        self.generation = -1
        self._stopping = False
        self._reload = True
        self._last_written = None
        self._adopted: Dict[str, Adopted] = {}       # by child name, until a slot claims them
        self._next_freeze_check = 0.0
        self._next_log_check = 0.0

    # ---- process management ----
    def _env(self, extra: Dict[str, str], import_path: str = PROJECT_ROOT) -> Dict[str, str]:
        """The environment of a child that imports ``clipper`` from ``import_path``."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPPER_")}
        theirs = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path and path != PROJECT_ROOT]
        env["PYTHONPATH"] = os.pathsep.join([import_path, *theirs])
        env[MARKER_ENV] = str(self.cluster.path)
        env.update(extra)
        return env

    def _package_only_path(self) -> str:
        return package_only_path(self.cluster.path / cluster_dir.PACKAGE_PATH_DIR)

    def _start(self, child: Child) -> None:
        child.started_at = time.monotonic()
        if child.name in self._adopted:      # still running from the previous supervisor
            child.process = self._adopted.pop(child.name)
            log.info("adopted %s (pid %d)", child.name, child.process.pid)
            return
        with self._log_file(child.name) as log_file:
            log_file.write(cluster_dir.log_start_line(child.name).encode())
            log_file.flush()                 # before the child's own lines
            try:
                child.process = subprocess.Popen(
                    child.command, env=child.env, stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT, cwd=str(self.cluster.path))
            except (OSError, ValueError) as error:    # the model's interpreter is gone: retry later
                log_file.write(f"cannot start {child.command[0]}: {error}\n".encode())
                log.error("cannot start %s: %s", child.name, error)
                child.failures += 1
                child.restart_at = child.started_at + MAX_RESTART_DELAY
                return
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _log_file(self, name: str):
        try:
            return open(self.cluster.logs / f"{name}.log", "ab")
        except (OSError, ValueError):     # the state directory was deleted: keep running
            return open(os.devnull, "wb")

    def _stop(self, children: List[Child]) -> None:
        """SIGTERM, then SIGKILL each child still running after its grace. All are watched
        together at a short interval (Popen.wait polls ever more slowly, up to 50 ms)."""
        running = [c for c in children if c.process and c.process.poll() is None]
        for child in running:
            child.process.terminate()
        started = time.monotonic()
        while running:
            time.sleep(STOP_POLL_SECONDS)
            running = [c for c in running if c.process.poll() is None]
            for child in [c for c in running if time.monotonic() > started + c.stop_grace]:
                log.warning("%s did not stop within %.0f s; killing it", child.name, child.stop_grace)
                child.process.kill()
                child.process.wait()
                running.remove(child)

    def _child(self, launch: Launch, name: str = "", python: str = sys.executable,
               details: Optional[Dict[str, object]] = None) -> Child:
        import_path = self._package_only_path() if launch.role == MODEL_CONTAINER else PROJECT_ROOT
        return Child(name or launch.process_name, launch.role, launch.argv(python),
                     self._env(launch.env, import_path), launch.stop_grace, details or {})

    @staticmethod
    def _replica_name(model: dict, index: int) -> str:
        # '_' cannot occur in model names, so this name is unambiguous (as Clipper's labels).
        return f"model-{model['name']}_{model['version']}-{index}"

    def _replica_child(self, model: dict, index: int, devices: List[str]) -> Child:
        name = self._replica_name(model, index)
        launch = recipe.model_container(self.config, model["name"], model["version"],
                                        model["input_type"], model["model_dir"],
                                        extra_env=device_environment(devices), replica_name=name)
        return self._child(launch, name, model["python"],
                           {"model_name": model["name"], "model_version": model["version"],
                            "replica": index, "gpus": devices, "model": _what_runs(model)})

    # ---- start-up ----
    def _adopt_survivors(self) -> None:
        """Take over the processes a previous supervisor recorded that still run; stop any
        other process of the cluster (started but not yet recorded when that one died)."""
        for record in self.cluster.processes():
            # Records of a directory of the user's own (main() refuses any other).
            process = ProcessRecord(record["pid"], record["create_time"]).process()
            if process is not None and record["role"] != WATCHDOG and process.pid != os.getpid():
                self._adopted[record["name"]] = Adopted(process)
        keep = {a.pid for a in self._adopted.values()} | {c.process.pid for c in self.children if c.process}
        strays = [p for p in cluster_dir.processes_marked_with(self.cluster.path) if p.pid not in keep]
        if strays:
            log.warning("stopping %d unrecorded processes of the cluster", len(strays))
            cluster_dir.terminate(strays, STRAY_STOP_GRACE)

    def _start_watchdog(self) -> None:
        me = ProcessRecord.of(os.getpid())
        child = Child(WATCHDOG, WATCHDOG, [sys.executable, "-m", "clipper.cluster.watchdog", str(self.cluster.path),
                                           str(me.pid), repr(me.create_time)], self._env({}), WATCHDOG_STOP_GRACE)
        self.children.append(child)
        self._start(child)

    def _start_servers(self) -> None:
        """All at once (the frontends retry Redis until it answers); then wait for Redis, so
        that a Redis that cannot start stops the start with its reason."""
        started = []
        for launch in recipe.servers(self.config, self.settings.get("embedded_redis", False)):
            child = self._child(launch)
            self.children.append(child)
            self._start(child)
            started.append((child, launch))
        for child, launch in started:
            if launch.role == REDIS:
                self._wait_until_ready(child, launch)

    def _wait_until_ready(self, child: Child, launch: Launch) -> None:
        def failure():
            if child.process.poll() is not None:
                return (f"{child.name} exited with code {child.process.returncode}; "
                        f"see {self.cluster.logs / (child.name + '.log')}")
            return None
        try:
            recipe.wait_until_ready([launch], failure)
        except recipe.StartFailed as error:
            raise SystemExit(str(error)) from None

    # ---- main loop ----
    def run(self) -> None:
        wakeup = SignalWakeup()        # a stop or a change of replicas is acted on at once
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self._lock = open(self.cluster.path / cluster_dir.SUPERVISOR_LOCK_FILE, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another supervisor keeps this cluster; exiting")
            return
        try:
            self._start_watchdog()            # first: from now on a kill -9 of this one is repaired
            self.cluster.set_supervisor(ProcessRecord.of(os.getpid()))
            self._adopt_survivors()
            self._start_servers()
            while not self._stopping:
                if self._reload:
                    self._reload = False
                    try:
                        self._apply_wanted_replicas()
                    except Exception:     # a file clients write: the cluster serves on, as it was
                        log.exception("could not apply the wanted replicas")
                    self._stop_unclaimed()
                self._kill_frozen()
                self._cap_logs()
                self._restart_exited()
                self._write_processes()
                wakeup.sleep(LOOP_SECONDS)
        finally:
            self._shutdown()
            wakeup.close()

    def _on_stop(self, *_args) -> None:
        self._stopping = True

    def _on_reload(self, *_args) -> None:
        self._reload = True

    def _apply_wanted_replicas(self) -> None:
        wanted = self.cluster.wanted_replicas()
        current = {c.name: c for c in self.children if c.role == MODEL_CONTAINER}
        slots = {}
        for key, model in wanted["models"].items():
            problem = wanted_entry_problem(model)
            if problem:
                # Not written by our client, which checks what it writes: one bad entry must
                # not stop the cluster. Its replicas stay as they are.
                log.error("ignoring the wanted replicas of %s: %s", key, problem)
                slots.update((c.name, None) for c in current.values()
                             if f"{c.details['model_name']}:{c.details['model_version']}" == key)
                continue
            slots.update((self._replica_name(model, index), (model, index)) for index in range(model["count"]))
        # A replica whose version now names another model (a deploy of the version again after
        # one that failed half-way) runs the old one: it is replaced, never kept.
        surplus = [child for name, child in current.items()
                   if name not in slots or (slots[name] is not None
                                            and child.details.get("model") != _what_runs(slots[name][0]))]
        self._stop(surplus)
        self.children = [c for c in self.children if c not in surplus]
        current = {name: child for name, child in current.items() if child not in surplus}
        gpus_in_use = Counter(device for c in self.children for device in c.details.get("gpus", []))
        for name, slot in slots.items():
            if name not in current:
                model, index = slot
                try:
                    devices = pick_devices(self.settings.get("gpus", []), model.get("gpus", 0), gpus_in_use)
                except ValueError as error:       # more GPUs than the machine has: the client checks it
                    log.error("not starting %s: %s", name, error)
                    continue
                gpus_in_use.update(devices)
                child = self._replica_child(model, index, devices)
                self.children.append(child)
                self._start(child)
        self.generation = wanted["generation"]

    def _stop_unclaimed(self) -> None:
        """Adopted processes that no longer have a place (e.g. replicas of a version that
        was stopped meanwhile)."""
        unclaimed, self._adopted = list(self._adopted.values()), {}
        cluster_dir.terminate([adopted.process for adopted in unclaimed], STRAY_STOP_GRACE)

    def _kill_frozen(self) -> None:
        """Kill a child stopped for FROZEN_SECONDS: _restart_exited then replaces it."""
        now = time.monotonic()
        if now < self._next_freeze_check:
            return
        self._next_freeze_check = now + FREEZE_CHECK_SECONDS
        for child in self.children:
            if child.process is None or child.process.poll() is not None:
                continue
            stopped = child.freeze.seconds(child.process.pid, now)
            if stopped >= FROZEN_SECONDS:
                log.warning("%s has been stopped for %.0f s; killing it", child.name, stopped)
                child.process.kill()

    def _cap_logs(self) -> None:
        """Start a log afresh once it passes max_log_size, keeping the end of the previous
        one (max_log_size at most) as <log>.1: a model that prints, or fails, on every query
        must not fill the disk (Redis's append-only file is on it too). Its writers keep
        their file: they append (O_APPEND), so after the truncation they write from its start."""
        now = time.monotonic()
        if now < self._next_log_check:
            return
        self._next_log_check = now + LOG_CHECK_SECONDS
        try:
            logs = [(path, path.stat().st_size) for path in self.cluster.logs.glob("*.log")]
        except OSError:                   # the state directory was deleted: keep serving
            return
        for path, size in logs:
            if size > self.config.max_log_size:
                try:
                    with open(path, "rb") as log_file, open(path.with_name(path.name + ".1"), "wb") as kept:
                        log_file.seek(max(0, size - self.config.max_log_size))
                        shutil.copyfileobj(log_file, kept)
                    os.truncate(path, 0)
                except OSError as error:
                    log.warning("could not start %s afresh: %s", path.name, error)
                    continue
                log.info("%s passed %d bytes: started afresh, the previous kept as %s.1",
                         path.name, self.config.max_log_size, path.name)

    def _restart_exited(self) -> None:
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll() if child.process else None
            if child.process is not None and code is not None:
                ran = now - child.started_at
                child.failures = 0 if ran >= HEALTHY_RUN_SECONDS else child.failures + 1
                child.last_exit = code
                delay = 0.0 if not child.failures else min(MAX_RESTART_DELAY, 0.1 * 2 ** child.failures)
                log.warning("%s exited with code %s after %.1f s; restarting in %.1f s",
                            child.name, code, ran, delay)
                child.process = None
                child.restart_at = now + delay
            if child.process is None and now >= child.restart_at:
                self._start(child)

    def _write_processes(self) -> None:
        records = [r for r in (child.record() for child in self.children) if r]
        failing = {c.name: {**c.details, "failures": c.failures, "exit_code": c.last_exit}
                   for c in self.children if c.failures}
        state = (self.generation, [(r["name"], r["pid"]) for r in records], failing)
        if state != self._last_written:
            try:
                self.cluster.write_processes(self.generation, records, failing)
            except OSError as error:      # the state directory was deleted: keep serving
                log.warning("cannot record the cluster's processes: %s", error)
            self._last_written = state

    def _shutdown(self) -> None:
        log.info("stopping the cluster")
        by_role = lambda *roles: [c for c in self.children if c.role in roles]
        self._stop(by_role(WATCHDOG))         # first: it would take the place of a stopped supervisor
        self._stop(by_role(MODEL_CONTAINER))
        self._stop(by_role(QUERY_FRONTEND, MANAGEMENT_FRONTEND))
        self._stop(by_role(REDIS))
        with contextlib.suppress(OSError):
            self.cluster.write_processes(self.generation, [], {})


def package_only_path(directory: Path) -> str:
    """``directory``, made to hold our packages alone (links), as a replica's import path:
    replicas run in the deploying client's interpreter, maybe another Python, which must
    import its own numpy and pyzmq, not those beside our packages (PROJECT_ROOT is
    site-packages when the project is installed with pip). ``clipper_admin`` is there for
    models that report metrics with ``clipper_admin.metrics``."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for package in ("clipper", "clipper_admin"):
        link, target = directory / package, os.path.join(PROJECT_ROOT, package)
        if not link.is_symlink() or os.readlink(link) != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target, target_is_directory=True)
    return str(directory)


def _what_runs(model: dict) -> List[str]:
    """What a replica of a wanted entry runs: its model, the interpreter, the input type."""
    return [model["model_dir"], model["python"], model["input_type"]]


def wanted_entry_problem(model: dict) -> Optional[str]:
    """What makes an entry of the wanted replicas unusable, or None."""
    for key in ("name", "version", "input_type", "model_dir", "python"):
        if type(model.get(key)) is not str:
            return f"its {key} is {model.get(key)!r}, not a string"
    for key in ("name", "version"):     # they name the replicas' processes and log files
        if not is_dns_label(model[key]):
            return f"its {key} {model[key]!r} is not a DNS-1123 label"
    for key, least in (("count", 0), ("gpus", 0)):
        value = model.get(key, 0)
        if type(value) is not int or value < least:
            return f"its {key} is {value!r}, not a whole number >= {least}"
    if model.get("count", 0) > recipe.MAX_REPLICAS_PER_VERSION:
        return f"its count is {model['count']}, more than {recipe.MAX_REPLICAS_PER_VERSION}, the most replicas of a version"
    return None


def main(config) -> None:
    if not config.cluster_dir:
        raise SystemExit("the supervisor needs --cluster-dir")
    cluster = ClusterDir(Path(config.cluster_dir))
    problem = cluster.not_ours()      # its files choose the programs run here: the user's own only
    if problem:
        raise SystemExit(f"the supervisor refuses {cluster.path}: it {problem}")
    Supervisor(cluster).run()
