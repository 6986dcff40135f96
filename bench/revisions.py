"""The source tree of a git revision, to run an earlier version beside this one."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (WORKTREE: this checkout, uncommitted changes included)."""
    if revision == "WORKTREE":
        return REPO
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
