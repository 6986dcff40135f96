"""A Ray node's directory of Clipper state, $TMPDIR/clipper-ray-<uid>: its name can be
guessed in a shared /tmp, so a place there made by another user is never used."""
import os
import tempfile

import pytest

from clipper_admin.ray.node_state import node_state_dir


@pytest.fixture
def tmpdir_of_node(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"clipper-ray-{os.getuid()}"


def test_the_directory_is_made_private(tmpdir_of_node):
    path = node_state_dir("clipper", "c1")
    assert path == tmpdir_of_node / "clipper" / "c1" and path.is_dir()
    assert tmpdir_of_node.stat().st_mode & 0o777 == 0o700


def test_one_made_open_by_an_earlier_version_is_made_private(tmpdir_of_node):
    tmpdir_of_node.mkdir(mode=0o755)
    tmpdir_of_node.chmod(0o755)
    node_state_dir("clipper", "c1")
    assert tmpdir_of_node.stat().st_mode & 0o777 == 0o700


def test_a_link_to_another_place_is_refused(tmpdir_of_node, tmp_path):
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    tmpdir_of_node.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        node_state_dir("clipper", "c1")
    assert not list(elsewhere.iterdir())


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_one_of_another_user_is_refused(tmpdir_of_node):
    tmpdir_of_node.mkdir(mode=0o777)
    os.chown(tmpdir_of_node, 65534, 65534)        # nobody: as if they had made it first
    with pytest.raises(PermissionError, match="belongs to user 65534"):
        node_state_dir("clipper", "c1")
    assert not list(tmpdir_of_node.iterdir())
