"""The state directory is the cluster's: a start or a stop, which delete what is there, never
take a place the user made under CLIPPER_STATE_DIR (a shared one, or a name that clashes)."""
import json
import os
import subprocess
import sys

import psutil
import pytest

from clipper.cluster.cluster_dir import (CLUSTER_FILE, MARKER_ENV, REPLICAS_FILE, START_LOCK_FILE, SUPERVISOR_FILE,
                                         ClusterDir, ProcessRecord, cluster_processes, orphan_cluster_paths,
                                         processes_marked_with, start_lock)
from clipper_admin import ClipperConnection, ClipperException, LocalContainerManager
from clipper_admin.deployers import python as python_deployer
from clipper_admin.local.local_container_manager import stop_all_local_clusters
from helpers import ROOT, all_gone, total, wait_for


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir(mode=0o700)
    return tmp_path / "state"


def connection(name="clash"):
    return ClipperConnection(LocalContainerManager(
        cluster_name=name, clipper_query_port=21337, clipper_management_port=21338,
        clipper_rpc_port=27000, clipper_metric_port=21390))


def test_a_folder_of_the_users_with_the_clusters_name_is_never_deleted(state_dir):
    thesis = state_dir / "clash" / "thesis" / "chapter1.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("months of work")
    for call in (lambda conn: conn.start_clipper(), lambda conn: conn.stop_all()):
        with pytest.raises(ClipperException, match=r"clash holds thesis and no cluster.json: "
                                                   r"it is not the state of a Clipper cluster"):
            call(connection())
    assert thesis.read_text() == "months of work"
    assert sorted(p.name for p in (state_dir / "clash").iterdir()) == ["thesis"]   # nothing added


def test_a_users_folder_that_looks_like_a_clusters_is_never_deleted(state_dir):
    """Names a cluster uses (models/, logs/) prove nothing: what a start writes first does."""
    weights = state_dir / "clash" / "models" / "resnet" / "weights.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"trained for a week")
    (state_dir / "clash" / "logs").mkdir()
    for call in (lambda conn: conn.start_clipper(), lambda conn: conn.stop_all()):
        with pytest.raises(ClipperException, match="clash holds models and no cluster.json"):
            call(connection())
    assert weights.read_bytes() == b"trained for a week"


def test_a_symbolic_link_in_place_of_the_cluster_is_not_followed(state_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (state_dir / "clash").symlink_to(elsewhere)
    with pytest.raises(ClipperException, match="is a symbolic link"):
        connection().start_clipper()
    with pytest.raises(ClipperException, match="is a symbolic link"):
        connection().stop_all()
    assert list(elsewhere.iterdir()) == [] and elsewhere.stat().st_mode & 0o777 == 0o755


def test_a_state_directory_reached_through_a_link_stays_where_the_link_pointed_at_the_start(tmp_path, monkeypatch):
    """CLIPPER_STATE_DIR=/tmp/clipper-state may be a link that someone else made first in the
    shared /tmp, pointing at a directory of the user's (so it passes the start's checks). Its
    owner re-pointed it, once the cluster ran, at a directory of theirs: the running cluster
    followed, the next deploy copied its model there, and the supervisor started the program
    that directory's replicas.json named (checked: another user's script ran as root)."""
    real, theirs, link = tmp_path / "real", tmp_path / "theirs", tmp_path / "clipper-state"
    real.mkdir(mode=0o700)
    theirs.mkdir(mode=0o700)
    link.symlink_to(real)
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(link))
    conn = connection("linked")
    conn.start_clipper()
    try:
        link.unlink()
        link.symlink_to(theirs)
        python_deployer.create_endpoint(conn, "app", "doubles", total)
        assert list(theirs.iterdir()) == []
        assert conn.cm.cluster.path == real / "linked" and any((real / "linked" / "models").iterdir())
    finally:
        conn.stop_all(graceful=False)


def test_a_file_in_place_of_the_cluster_or_of_the_state_directory_is_a_clear_error(state_dir, monkeypatch):
    (state_dir / "clash").write_text("not a directory")
    with pytest.raises(ClipperException, match="clash is not a directory"):
        connection().start_clipper()
    with pytest.raises(ClipperException, match="clash is not a directory"):
        connection().stop_all()
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(state_dir / "clash"))
    with pytest.raises(ClipperException, match="which is not a directory"):
        connection("any").start_clipper()
    assert (state_dir / "clash").read_text() == "not a directory"


def test_a_state_directory_others_may_write_to_is_refused(state_dir):
    """What is in it says which programs the supervisor runs: a shared /tmp/x that another
    user made first would let them choose."""
    state_dir.chmod(0o777)
    with pytest.raises(ClipperException, match="which others may write to"):
        connection().start_clipper()
    assert list(state_dir.iterdir()) == []


def test_a_running_cluster_is_stopped_even_where_its_directory_would_now_be_refused(state_dir):
    """Its processes carry its marker: they are stopped; only the directory is left as it is."""
    conn = connection("running")
    conn.start_clipper()
    pids = [record["pid"] for record in conn.cm.cluster.processes()]
    state_dir.chmod(0o777)
    try:
        conn.stop_all()
        assert all_gone(pids) and (state_dir / "running").is_dir()
    finally:
        state_dir.chmod(0o700)
        stop_all_local_clusters(graceful=False)


def test_stopping_every_cluster_of_a_state_directory_spares_those_of_one_inside_it(state_dir, monkeypatch):
    """closeClipper.py on CLIPPER_STATE_DIR=/tmp stopped the clusters of /tmp/<x> too."""
    inner = state_dir / "inner"
    inner.mkdir(mode=0o700)
    monkeypatch.setenv("CLIPPER_STATE_DIR", str(inner))
    nested = connection("nested")
    nested.start_clipper()
    try:
        monkeypatch.setenv("CLIPPER_STATE_DIR", str(state_dir))
        assert stop_all_local_clusters() == []
        assert nested.get_all_apps() == []         # still answers
    finally:
        monkeypatch.setenv("CLIPPER_STATE_DIR", str(inner))
        nested.stop_all()


def test_records_others_could_write_neither_stop_a_process_nor_pass_for_a_running_cluster(state_dir):
    """A record is a file: in a state directory others may write to (a shared /tmp/clipper
    another user made first), it could name any process, which closeClipper.py then killed
    (as root, sshd), and which connect() took for a running cluster."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": bystander.pid, "create_time": psutil.Process(bystander.pid).create_time()}
        planted = state_dir / "planted"
        planted.mkdir(mode=0o700)
        (planted / "cluster.json").write_text("{}")
        (planted / "supervisor.json").write_text(json.dumps(record))
        (planted / "processes.json").write_text(json.dumps(
            {"processes": [{**record, "role": "query-frontend", "name": "query-frontend"}]}))
        state_dir.chmod(0o777)
        assert not connection("planted").cm.cluster.is_running()
        with pytest.raises(ClipperException, match="which others may write to"):
            stop_all_local_clusters(graceful=False)
        assert bystander.poll() is None, "the process a record named was stopped"
    finally:
        state_dir.chmod(0o700)
        bystander.kill()
        bystander.wait()


def test_a_crashed_cluster_in_a_state_directory_others_may_write_to_is_not_started_again(state_dir):
    """connect() starts a crashed cluster again from its files, which choose the programs it
    runs and the ports (and admin token) it talks to: in a place others could write to, it ran
    a review's planted program as the user (start_clipper() already refused such a place)."""
    conn = connection("crashed")
    conn.start_clipper()
    processes = cluster_processes(conn.cm.cluster)
    for process in processes:
        process.kill()
    wait_for(lambda: all_gone([p.pid for p in processes]), 10, "the cluster's processes exiting")
    state_dir.chmod(0o777)
    try:
        with pytest.raises(ClipperException, match="which others may write to"):
            connection("crashed").connect()
        supervisor = subprocess.run([sys.executable, "-m", "clipper", "supervisor",
                                     f"--cluster-dir={conn.cm.cluster.path}"],
                                    cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert supervisor.returncode != 0 and "which others may write to" in supervisor.stderr
        assert cluster_processes(conn.cm.cluster) == []
    finally:
        state_dir.chmod(0o700)
        stop_all_local_clusters(graceful=False)


def test_the_start_lock_is_not_taken_in_a_state_directory_others_may_write_to(state_dir, tmp_path):
    """Docker starts take the lock without refuse_foreign: in a shared state directory
    another user made first (CLIPPER_STATE_DIR=/tmp/clipper), a link there as .start.lock
    had the user create whatever file it named (as root: /etc/nologin), and whoever held
    the lock stopped every start."""
    target = tmp_path / "file-the-link-names"
    (state_dir / START_LOCK_FILE).symlink_to(target)
    state_dir.chmod(0o777)
    try:
        with pytest.raises(PermissionError, match="which others may write to"):
            with start_lock():
                pass
        assert not target.exists()
    finally:
        state_dir.chmod(0o700)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_the_start_lock_is_not_taken_in_a_state_directory_of_another_user(state_dir):
    state_dir.chmod(0o755)
    os.chown(state_dir, 65534, 65534)           # nobody: as if they had made it first
    with pytest.raises(PermissionError, match="which belongs to another user"):
        with start_lock():
            pass
    assert list(state_dir.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="starting a process as another user needs root")
def test_another_users_process_is_never_taken_for_the_clusters(state_dir):
    """Its environment (the cluster's marker) and its title (Redis's) are its own to set: root
    stopping a cluster, or closeClipper.py listing clusters, took it for one of the cluster's."""
    cluster = state_dir / "prod"

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)
    impostors = [subprocess.Popen(["sleep", "60"], env={MARKER_ENV: str(cluster)}, preexec_fn=as_nobody),
                 subprocess.Popen([f"valkey-server unixsocket:{cluster}/redis.sock", "60"],
                                  executable="/bin/sleep", preexec_fn=as_nobody)]
    try:
        assert processes_marked_with(cluster) == []
        assert orphan_cluster_paths() == []
        assert stop_all_local_clusters(graceful=False) == []
        assert all(p.poll() is None for p in impostors), "another user's process was stopped"
    finally:
        for process in impostors:
            process.kill()
            process.wait()


def test_the_default_state_directory_is_made_private_even_if_it_existed(tmp_path, monkeypatch):
    """~/.clipper made open (0755: an older version, or by hand) showed every user the
    names of the clusters; its clusters' own directories are 0700 in any case."""
    monkeypatch.delenv("CLIPPER_STATE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".clipper").mkdir(mode=0o755)
    with start_lock():
        pass
    assert (tmp_path / ".clipper").stat().st_mode & 0o777 == 0o700


def test_the_clusters_files_are_the_users_alone_whatever_the_umask(state_dir):
    """cluster.json holds the admin token and the RPC keys: under the usual umask (022) it was
    0644, readable by anyone once the directory was copied or opened up."""
    cluster = ClusterDir(state_dir / "secrets")
    previous = os.umask(0o022)
    try:
        cluster.create({"config": {"admin_token": "t0ken"}})
        cluster.set_supervisor(ProcessRecord.of(os.getpid()))
    finally:
        os.umask(previous)
    for name in (CLUSTER_FILE, REPLICAS_FILE, SUPERVISOR_FILE):
        assert (cluster.path / name).stat().st_mode & 0o777 == 0o600, name
