"""Where a Ray node keeps Clipper's state: a directory of the user's own, under $TMPDIR, per
cluster; in it the frontends' state directory and the Ray session that started them."""
import os
import stat
import tempfile
from pathlib import Path
from typing import Optional

import psutil

RAY_SESSION_FILE = "ray-session"     # the Ray cluster whose frontends' actor started the servers


def node_state_dir(namespace, cluster_name):
    """This node's directory for one cluster: the frontends' state, unpacked models, logs."""
    path = private_root() / namespace / cluster_name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def frontends_state_dir(node_dir: Path) -> Path:
    """The CLIPPER_STATE_DIR of the local backend that runs the frontends' servers."""
    return node_dir / "state"


def recorded_ray_session(node_dir: Path) -> Optional[str]:
    """The Ray session whose frontends' actor started the servers of ``node_dir``, or None."""
    try:
        return (node_dir / RAY_SESSION_FILE).read_text()
    except FileNotFoundError:                 # a new cluster, or started before sessions were recorded
        return None


def ray_session_runs_here(session: str) -> bool:
    """Whether a node of that Ray session (its raylet, its workers) runs on this machine."""
    flag = f"--session-name={session}"
    for process in psutil.process_iter(["cmdline"]):
        if flag in (process.info["cmdline"] or ()):
            return True
    return False


def private_root_path() -> Path:
    """Where private_root() is, without making it."""
    return Path(tempfile.gettempdir()) / f"clipper-ray-{os.getuid()}"


def private_root() -> Path:
    """``$TMPDIR/clipper-ray-<uid>``, this user's alone. Its name can be guessed, and /tmp is
    shared: a directory or link of that name made by another user would let them swap the
    models (and the programs) that replicas run as this one, so it is refused."""
    root = private_root_path()
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    status = os.lstat(root)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        what = "is a symbolic link" if stat.S_ISLNK(status.st_mode) else (
            "is not a directory" if not stat.S_ISDIR(status.st_mode) else f"belongs to user {status.st_uid}")
        raise PermissionError(f"{root}, where Clipper keeps this node's cluster state, {what}, not "
                              f"to you: remove it, or give the node's processes another TMPDIR")
    if status.st_mode & 0o077:                     # made by an earlier version, with the umask's mode
        os.chmod(root, 0o700)
    return root
