"""A cluster that listens beyond loopback says so in the client, not only in its servers' logs.

The servers' warning went to their log files, which no one reads at start and stop_all()
deletes; LocalContainerManager(host="0.0.0.0") without an admin token printed nothing. The
test binds loopback only: the manager is made to take 127.0.0.1 for an exposed address.
"""
import logging
import signal

import psutil

from helpers import local_cluster
import clipper_admin.local.local_container_manager as local_manager
from clipper.cluster.cluster_dir import cluster_processes
from clipper_admin import ClipperConnection, LocalContainerManager


def test_a_cluster_beyond_loopback_warns_the_client(caplog, monkeypatch):
    monkeypatch.setattr(local_manager, "is_loopback", lambda host: False)
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, local_manager.logger.name):
        with local_cluster("exposed", 17641, 17642, 17643, 17644):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("beyond this machine" in w and "pickled code" in w and "no admin token" in w
               and "17642" in w for w in warnings), warnings


def test_a_loopback_cluster_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, local_manager.logger.name):
        with local_cluster("loopback", 17641, 17642, 17643, 17644):
            pass
    assert not any("beyond this machine" in r.getMessage() for r in caplog.records)


def test_a_recovered_cluster_warns_with_its_own_port(caplog, monkeypatch):
    """connect() recovering a crashed cluster named the port its manager was made with
    (LocalContainerManager(cluster_name=...): 1338), not the cluster's."""
    monkeypatch.setattr(local_manager, "is_loopback", lambda host: False)
    monkeypatch.delenv("CLIPPER_ADMIN_TOKEN", raising=False)
    with local_cluster("exposed", 17641, 17642, 17643, 17644) as conn:
        processes = cluster_processes(conn.cm.cluster)
        for stop in (signal.SIGSTOP, signal.SIGKILL):       # all at once: none restarts another
            for process in processes:
                process.send_signal(stop)
        psutil.wait_procs(processes, timeout=30)       # else a loaded machine may show it running
        caplog.clear()
        with caplog.at_level(logging.WARNING, local_manager.logger.name):
            ClipperConnection(LocalContainerManager(cluster_name="exposed")).connect()
    warnings = [r.getMessage() for r in caplog.records if "beyond this machine" in r.getMessage()]
    assert warnings and all("(17642)" in w for w in warnings), warnings
