"""Keeps one local cluster running: Redis, the two frontends and the model replicas.

Started detached (its own session) by LocalContainerManager, so the cluster outlives the
script that started it, as Clipper's Docker containers do. It restarts any process that
dies (Clipper did not), applies the wanted replicas on SIGHUP, records every process in
processes.json, and on SIGTERM stops everything: model replicas first, Redis last.
"""
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import redis

from clipper.cluster.gpus import device_environment, pick_devices
from clipper.cluster.registry import MARKER_ENV, ClusterDir, ProcessRecord
from clipper.cluster.redis_binary import redis_server_command

log = logging.getLogger("clipper.supervisor")

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
LOOP_SECONDS = 0.1
STOP_GRACE_SECONDS = 5.0
# A process that ran at least this long before dying is restarted at once.
HEALTHY_RUN_SECONDS = 10.0
MAX_RESTART_DELAY = 5.0


@dataclass(eq=False)
class Child:
    """One supervised process slot: what to run, and the process currently running it."""
    name: str                     # log file name and registry label
    role: str
    command: List[str]
    env: Dict[str, str]
    details: Dict[str, object] = field(default_factory=dict)
    process: Optional[subprocess.Popen] = None
    started_at: float = 0.0
    failures: int = 0             # exits in a row that came too soon
    last_exit: Optional[int] = None
    restart_at: float = 0.0

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
        self.children: List[Child] = []
        self.generation = -1
        self._stopping = False
        self._reload = True
        self._last_written = None

    # ---- process management ----
    def _env(self, extra: Dict[str, str]) -> Dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPPER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROJECT_ROOT, env.get("PYTHONPATH")]))
        env[MARKER_ENV] = str(self.cluster.path)
        env.update(extra)
        return env

    def _start(self, child: Child) -> None:
        child.started_at = time.monotonic()
        with open(self.cluster.logs / f"{child.name}.log", "ab") as log_file:
            try:
                child.process = subprocess.Popen(
                    child.command, env=child.env, stdin=subprocess.DEVNULL, stdout=log_file,
                    stderr=subprocess.STDOUT, cwd=str(self.cluster.path))
            except OSError as error:      # e.g. the model's interpreter is gone: retry later
                log_file.write(f"cannot start {child.command[0]}: {error}\n".encode())
                child.failures += 1
                child.restart_at = child.started_at + MAX_RESTART_DELAY
                return
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _stop(self, children: List[Child], grace: float = STOP_GRACE_SECONDS) -> None:
        running = [c for c in children if c.process and c.process.poll() is None]
        for child in running:
            child.process.terminate()
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.name, grace)
                child.process.kill()
                child.process.wait()

    def _server_child(self, role: str, flags: List[str]) -> Child:
        # The token goes through the environment: command lines are visible to every user.
        env = self._env({"CLIPPER_ADMIN_TOKEN": self.settings.get("admin_token", "")})
        return Child(role, role, [sys.executable, "-m", "clipper", role, *flags], env)

    def _frontends(self) -> List[Child]:
        s = self.settings
        common = [f"--host={s['host']}", f"--redis-url={s['redis_url']}",
                  f"--body-timeout={s['body_timeout']}", f"--max-body-size={s['max_body_size']}"]
        return [
            self._server_child("management-frontend", [*common, f"--management-port={s['management_port']}"]),
            self._server_child("query-frontend", [
                *common, f"--query-port={s['query_port']}", f"--rpc-port={s['rpc_port']}",
                f"--metrics-port={s['metrics_port']}",
                f"--cache-size={s['cache_size']}"]),
        ]

    def _replica_child(self, model: dict, index: int, devices: List[str]) -> Child:
        # '_' cannot occur in model names, so this name is unambiguous (as Clipper's labels).
        name = f"model-{model['name']}_{model['version']}-{index}"
        env = self._env({
            "CLIPPER_MODEL_NAME": model["name"], "CLIPPER_MODEL_VERSION": model["version"],
            "CLIPPER_MODEL_PATH": model["model_dir"], "CLIPPER_INPUT_TYPE": model["input_type"],
            "CLIPPER_IP": self.settings["host"], "CLIPPER_PORT": str(self.settings["rpc_port"]),
            **device_environment(devices),
        })
        return Child(name, "model-container", [model["python"], "-m", "clipper", "model-container"],
                     env, {"model_name": model["name"], "model_version": model["version"],
                           "replica": index, "gpus": devices})

    # ---- start-up ----
    def _start_redis(self) -> None:
        if not self.settings.get("embedded_redis"):
            return
        socket_path = self.settings["redis_socket"]
        child = Child("redis", "redis", redis_server_command(self.cluster.path / "redis", socket_path),
                      self._env({}))
        self.children.append(child)
        self._start(child)
        self._wait_for_redis(child)

    def _wait_for_redis(self, child: Child) -> None:
        client = redis.Redis.from_url(self.settings["redis_url"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise SystemExit(f"redis-server exited with code {child.process.returncode}; "
                                 f"see {self.cluster.logs / 'redis.log'}")
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not answer within 30 s")

    # ---- main loop ----
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.cluster.set_supervisor(ProcessRecord.of(os.getpid()))
        try:
            self._start_redis()
            for child in self._frontends():
                self.children.append(child)
                self._start(child)
            while not self._stopping:
                if self._reload:
                    self._reload = False
                    self._apply_wanted_replicas()
                self._restart_exited()
                self._write_registry()
                time.sleep(LOOP_SECONDS)
        finally:
            self._shutdown()

    def _on_stop(self, *_args) -> None:
        self._stopping = True

    def _on_reload(self, *_args) -> None:
        self._reload = True

    def _apply_wanted_replicas(self) -> None:
        wanted = self.cluster.wanted_replicas()
        slots = {f"model-{m['name']}_{m['version']}-{index}": (m, index)
                 for m in wanted["models"].values() for index in range(m["count"])}
        current = {c.name: c for c in self.children if c.role == "model-container"}
        surplus = [child for name, child in current.items() if name not in slots]
        self._stop(surplus)
        self.children = [c for c in self.children if c not in surplus]
        gpus_in_use = Counter(device for c in self.children for device in c.details.get("gpus", []))
        for name, (model, index) in slots.items():
            if name not in current:
                devices = pick_devices(self.settings.get("gpus", []), model.get("gpus", 0), gpus_in_use)
                gpus_in_use.update(devices)
                child = self._replica_child(model, index, devices)
                self.children.append(child)
                self._start(child)
        self.generation = wanted["generation"]

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

    def _write_registry(self) -> None:
        records = [r for r in (child.record() for child in self.children) if r]
        failing = {c.name: {**c.details, "failures": c.failures, "exit_code": c.last_exit}
                   for c in self.children if c.failures}
        state = (self.generation, [(r["name"], r["pid"]) for r in records], failing)
        if state != self._last_written:
            self.cluster.write_processes(self.generation, records, failing)
            self._last_written = state

    def _shutdown(self) -> None:
        log.info("stopping the cluster")
        by_role = lambda *roles: [c for c in self.children if c.role in roles]
        self._stop(by_role("model-container"))
        self._stop(by_role("query-frontend", "management-frontend"))
        self._stop(by_role("redis"))
        self.cluster.write_processes(self.generation, [], {})


def main(config) -> None:
    if not config.cluster_dir:
        raise SystemExit("the supervisor needs --cluster-dir")
    Supervisor(ClusterDir(Path(config.cluster_dir))).run()
