"""The replicas' metrics files as the query frontend reads them: whatever a model writes
there, the served text stays valid Prometheus text, each series once."""
import logging
import os

import prometheus_client
import pytest
from prometheus_client.core import GaugeMetricFamily

from clipper.container.metrics import ReplicaMetrics
from clipper.query_frontend import replica_metrics
from clipper.query_frontend.prometheus import render
from clipper.query_frontend.replica_metrics import ReplicaFiles, combined


def served_text(own, directory):
    return render(combined(own, ReplicaFiles(str(directory)).read())).decode()


@pytest.fixture
def replica():
    """make(directory, name, **metrics): a replica's file with ``metrics`` (name: type)
    besides Clipper's, as a replica writes it; removed (and its thread ended) after the test."""
    made = []

    def make(directory, name, **metrics):
        written = ReplicaMetrics()
        written.bind("model-" + name, "1", name, str(directory))
        for metric, kind in metrics.items():
            written.add(metric, kind, "a model's own")
        written.write()
        made.append(written)
        return written
    yield make
    for written in made:
        written._path = None        # its file stays for the other readers of the test; its thread ends
    prometheus_client.enable_created_metrics()     # bind() disabled them for this process


def families_of(text):
    """Each series name with the family (TYPE line) it falls under; fails on a second TYPE."""
    owner, current = {}, None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
            assert current not in owner.values(), f"a second TYPE line for {current}"
        elif line and not line.startswith("#"):
            owner.setdefault(line.split("{")[0].split(" ")[0], set()).add(current)
    return owner


def test_a_name_that_is_another_familys_is_left_out(tmp_path, replica):
    replica(tmp_path, "a", dup="Counter", shape="Histogram", internal_total="Histogram")
    replica(tmp_path, "b", dup="Gauge", shape="Gauge", dup_total="Gauge")
    own = [GaugeMetricFamily("internal_total", "the frontend's", value=1)]
    text = served_text(own, tmp_path)
    owners = families_of(text)
    assert all(len(families) == 1 for families in owners.values()), owners
    assert owners["internal_total"] == {"internal_total"}           # the frontend's alone
    assert 'dup_total{model_name="model-a"' in text and 'dup{' not in text
    assert 'shape{' not in text and "shape_count" in text


def test_a_file_that_copies_another_replicas_series_adds_none(tmp_path, replica):
    replica(tmp_path, "a")
    (tmp_path / "copy.prom").write_bytes((tmp_path / "a.prom").read_bytes())
    text = served_text([], tmp_path)
    assert text.count('clipper_mc_pred_total{model_name="model-a"') == 1


def test_what_is_not_a_replicas_regular_file_is_not_read(tmp_path, replica):
    replica(tmp_path, "a")
    os.mkfifo(tmp_path / "fifo.prom")
    writer = os.open(tmp_path / "fifo.prom", os.O_RDWR)      # a FIFO with a writer: would not block
    (tmp_path / "link.prom").symlink_to(tmp_path / "a.prom")
    (tmp_path / "info.prom").write_text('# TYPE m info\nm_info{model_name="x",model_version="1",replica="x"} 1\n')
    (tmp_path / "unlabelled.prom").write_text("# TYPE loose gauge\nloose 1\n")
    try:
        replicas = ReplicaFiles(str(tmp_path)).read()
    finally:
        os.close(writer)
    assert [r.labels["replica"] for r in replicas] == ["a"]


def test_a_scrape_reads_a_bounded_amount(tmp_path, monkeypatch, caplog, replica):
    for index in range(5):
        replica(tmp_path, f"r{index}")
    size = (tmp_path / "r0.prom").stat().st_size
    read = lambda: [r.labels["replica"] for r in ReplicaFiles(str(tmp_path)).read()]  # noqa: E731
    monkeypatch.setattr(replica_metrics, "MAX_SCRAPE_BYTES", 2 * size + 1)
    for rate_limit in replica_metrics.log.filters:      # other tests' lines do not count here
        monkeypatch.setattr(rate_limit, "_window_start", float("-inf"))
    with caplog.at_level(logging.WARNING):
        assert read() == ["r0", "r1"]                             # a third would go over the budget
    assert "files from r2.prom on are not read" in caplog.text
    monkeypatch.setattr(replica_metrics, "MAX_SCRAPE_BYTES", 10 * size)
    monkeypatch.setattr(replica_metrics, "MAX_FILES", 3)
    assert read() == ["r0", "r1", "r2"]
