"""The Ray cluster `ray start` recorded in the shared /tmp (RAY_TMPDIR/ray/ray_current_cluster),
which closeClipper.py joins to stop the clusters on it: only a record the user wrote counts."""
import contextlib
import os
import socket

import pytest

from clipper_admin.ray.ray_container_manager import RAY_CURRENT_CLUSTER_FILE, _local_ray_address


@pytest.fixture
def record(tmp_path, monkeypatch):
    """A record naming a port that answers (a listener of the test's)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with contextlib.closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        path = tmp_path / "ray" / RAY_CURRENT_CLUSTER_FILE
        path.parent.mkdir()
        path.write_text(f"127.0.0.1:{listener.getsockname()[1]}\n")
        yield path


def test_the_users_own_record_is_followed(record):
    assert _local_ray_address() == record.read_text().strip()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_record_another_user_wrote_is_ignored(record):
    """Another user who made /tmp/ray first, or runs a Ray cluster of their own, wrote it: a
    driver joining their cluster runs what its actors send back."""
    os.chown(record, 65534, 65534)              # nobody
    assert _local_ray_address() is None         # (connect_ray reads the same record; Ray is not
                                                # imported here: tests/ray must import it first)
