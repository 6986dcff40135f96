"""Writing a file so that its readers see the old content or the new, never half of it."""
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it (hidden, this process's own),
    renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
