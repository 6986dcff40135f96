"""The replicas' metrics files (clipper.container.metrics), read for the metrics port.

A file is a replica's own, written by code of the user's (the model), so it is read as
untrusted (clipper.container.metrics.read_metrics_file), at most MAX_SCRAPE_BYTES and
MAX_FILES in all, and off the event loop (the metrics port answers from a thread), since
parsing a few hundred kilobytes of text takes a while. A file untouched for STALE_SECONDS
is a dead replica's and is deleted. A file whose bytes did not change is not parsed again.
"""
import logging
import os
import threading
import time
from typing import Dict, Iterable, List, Optional

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from clipper.container.metrics import FILE_SUFFIX, LABELS, STALE_SECONDS, read_metrics_file
from clipper.log_limit import LogRateLimit

log = logging.getLogger("clipper.query_frontend.replica_metrics")
log.addFilter(LogRateLimit(5, 60.0, "the replicas' metrics files"))

# In all, per scrape: some thousand replicas of Clipper's metrics, some tens at their limits
MAX_SCRAPE_BYTES = 8 * 1024 * 1024
MAX_FILES = 4096
# The names a family of each type (those a replica writes) may use in Prometheus text
_SUFFIXES = {"counter": ("", "_total", "_created"), "gauge": ("",), "summary": ("", "_count", "_sum", "_created"),
             "histogram": ("", "_bucket", "_count", "_sum", "_created")}


class Replica:
    """One replica's file, parsed: its families and its labels."""
    __slots__ = ("content", "families", "labels")

    def __init__(self, content: bytes, families: List[Metric], labels: Dict[str, str]):
        self.content, self.families, self.labels = content, families, labels


class ReplicaFiles:
    def __init__(self, directory: str):
        self.directory = directory
        self._parsed: Dict[str, Replica] = {}      # by file name
        self._lock = threading.Lock()              # scrapes may overlap, each in its thread

    def read(self) -> List[Replica]:
        """Every live replica's file, parsed, in file name order."""
        with self._lock:
            replicas, parsed = [], {}
            try:
                names = sorted(name for name in os.listdir(self.directory) if name.endswith(FILE_SUFFIX))
            except OSError:
                return []                          # the cluster is being stopped
            if len(names) > MAX_FILES:
                log.warning("reading %d of the %d files in the replica metrics", MAX_FILES, len(names))
            budget = MAX_SCRAPE_BYTES
            for name in names[:MAX_FILES]:
                content = self._content(name)
                if content is None:
                    continue
                if len(content) > budget:
                    log.warning("the replica metrics files from %s on are not read: over %d bytes in all",
                                name, MAX_SCRAPE_BYTES)
                    break
                budget -= len(content)
                replica = self._parsed.get(name)
                if replica is None or replica.content != content:
                    replica = _parse(name, content)
                if replica is not None:
                    parsed[name] = replica
                    replicas.append(replica)
            self._parsed = parsed
            return replicas

    def _content(self, name: str) -> Optional[bytes]:
        """The bytes of file ``name``; None if it is stale (deleted), gone or not a replica's."""
        path = os.path.join(self.directory, name)
        try:
            if os.lstat(path).st_mtime < time.time() - STALE_SECONDS:
                os.unlink(path)                    # its replica is gone
                return None
            return read_metrics_file(path)
        except ValueError as error:
            log.warning("skipping %s in the replica metrics: %s", name, error)
        except OSError:                            # a link; replaced or deleted meanwhile
            pass
        return None


def _parse(name: str, content: bytes):
    try:
        families = [family for family in text_string_to_metric_families(content.decode("utf-8", "replace"))
                    if family.type in _SUFFIXES]
    except ValueError:                             # its text says nothing more to the log
        log.warning("skipping %s in the replica metrics: not Prometheus text", name)
        return None
    labels = next((sample.labels for family in families for sample in family.samples
                   if all(sample.labels.get(label) for label in LABELS)), None)
    if labels is None:
        log.warning("skipping %s in the replica metrics: no series of a replica", name)
        return None
    return Replica(content, families, {label: labels[label] for label in LABELS})


def _names(family: Metric) -> set:
    return {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))} | {
        sample.name for sample in family.samples}


def combined(own: Iterable[Metric], replicas: List[Replica]) -> List[Metric]:
    """``own`` (the frontend's families), then one family per name of the replicas', their
    series side by side. A family whose name, or the name of a series it may write, is
    another's (the frontend's, or another type's) is left out: the text must stay valid."""
    families = list(own)
    owner = {name: None for family in families for name in _names(family)}     # None: the frontend's
    merged: Dict[str, Metric] = {}
    seen = set()                                   # (series name, labels): each once
    for replica in replicas:
        for family in replica.families:
            key = (family.name, family.type)
            clash = next((name for name in _names(family) if owner.get(name, key) != key), None)
            if clash is not None:
                log.warning("leaving out %s of replica %s: %s is another metric's", family.name,
                            replica.labels["replica"], clash)
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
            owner.update((name, key) for name in _names(family))
            for sample in family.samples:
                series = (sample.name, tuple(sorted(sample.labels.items())))
                if series not in seen:
                    seen.add(series)
                    merged[family.name].samples.append(sample)
    return families + list(merged.values())
