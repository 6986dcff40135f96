"""``python -m clipper <role> --help`` lists the role's options; it used to fail with
"unknown arguments: --help", though the README sends users to flags such as
``--redis-timeout`` of ``python -m clipper management-frontend``."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "clipper", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_role_lists_its_flags_and_variables():
    done = run("management-frontend", "--help")
    assert done.returncode == 0, done.stderr
    assert "--redis-timeout" in done.stdout and "CLIPPER_REDIS_TIMEOUT" in done.stdout
    assert "--max-batch-size" not in done.stdout          # a query frontend setting
    query = run("query-frontend", "-h")
    assert query.returncode == 0 and "--max-batch-size" in query.stdout and "CLIPPER_HEADER_TIMEOUT" in query.stdout


def test_help_without_a_role_names_the_roles():
    done = run("--help")
    assert done.returncode == 0 and "management-frontend" in done.stdout
