"""The replicas' metrics files (clipper.container.metrics), read for the metrics port.

A file is a replica's own, written by code of the user's (the model), so it is read as
untrusted: regular files only, never through a link, without blocking (a FIFO), at most
MAX_FILE_BYTES; and off the event loop (``combined`` runs in a thread), since parsing
a few hundred kilobytes of text takes a while. A file untouched for STALE_SECONDS is a
dead replica's and is deleted. A file whose bytes did not change is not parsed again.
"""
import logging
import os
import stat
import threading
import time
from typing import Dict, Iterable, List, Tuple

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from clipper.container.metrics import FILE_SUFFIX, LABELS, MAX_FILE_BYTES, STALE_SECONDS
from clipper.log_limit import LogRateLimit

log = logging.getLogger("clipper.query_frontend.replica_metrics")
log.addFilter(LogRateLimit(5, 60.0, "the replicas' metrics files"))

# The sample names a family of each type may write (Prometheus text, as prometheus_client writes it)
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "summary": ("", "_count", "_sum", "_created"),
             "histogram": ("_bucket", "_count", "_sum", "_created")}


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
            for name in names:
                content = self._content(name)
                if content is None:
                    continue
                replica = self._parsed.get(name)
                if replica is None or replica.content != content:
                    replica = _parse(name, content)
                if replica is not None:
                    parsed[name] = replica
                    replicas.append(replica)
            self._parsed = parsed
            return replicas

    def _content(self, name: str):
        path = os.path.join(self.directory, name)
        try:
            status = os.lstat(path)
            if not stat.S_ISREG(status.st_mode):
                log.warning("skipping %s in the replica metrics: not a regular file", name)
                return None
            if status.st_mtime < time.time() - STALE_SECONDS:
                os.unlink(path)                    # its replica is gone
                return None
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:                            # replaced or deleted meanwhile
            return None
        with open(descriptor, "rb") as file:
            content = file.read(MAX_FILE_BYTES + 1)
        if len(content) > MAX_FILE_BYTES:
            log.warning("skipping %s in the replica metrics: more than %d bytes", name, MAX_FILE_BYTES)
            return None
        return content


def _parse(name: str, content: bytes):
    try:
        families = list(text_string_to_metric_families(content.decode("utf-8", "replace")))
    except ValueError as error:
        log.warning("skipping %s in the replica metrics: %s", name, str(error)[:200])
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
            merged[family.name].samples.extend(family.samples)
    return families + list(merged.values())
