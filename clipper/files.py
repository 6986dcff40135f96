"""Writing a file so that its readers see the old content or the new, never half of it."""
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it (hidden, this process's own),
    renamed into place. The file is the user's alone (0600), whatever the umask: a cluster's
    settings hold its admin token and RPC keys, and a copy of its directory, or a directory
    opened up later, must not hand them to others."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
