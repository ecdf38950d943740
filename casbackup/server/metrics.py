"""/metrics in Prometheus text format, one registry per app instance (no global state).

Values are read when scraped (a custom collector), from the repositories (snapshots are cached
by id, so a scrape lists folders and reads only new snapshots) and the state database:

- per application: last successful backup time, its bytes added, duration and files; snapshot
  count; last verification result and time. "Last" is the newest not dated after now: a
  snapshot or record written while a clock ran ahead would otherwise stand for every run
  until that date, and ``time() - casbackup_last_backup_timestamp_seconds > 26h`` (the
  usual alert) would stay silent for as long as the clock was ahead (a year ahead: a year);
  the dashboard and the scheduler's overdue check skip those too;
- per repository: stored size (cached for ``SIZE_CACHE_S``: listing every pack on each scrape
  would cost more than it tells);
- jobs by kind and outcome.

An app-scoped caller sees only its applications' series (and no repository totals).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from casbackup.errors import CasError

if TYPE_CHECKING:
    from casbackup.server.service import Service

SIZE_CACHE_S = 300.0


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


class ServiceCollector:
    def __init__(self, service: Service) -> None:
        self.service = service
        self._sizes: dict[str, tuple[float, int]] = {}

    def _repo_size(self, key: str, handle: Any) -> int:
        cached = self._sizes.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < SIZE_CACHE_S:
            return cached[1]
        size = sum(s for _, s in handle.repo().backend.list(""))
        self._sizes[key] = (now, size)
        return size

    def collect(self) -> Iterator[Metric]:
        registry = self.service.registry
        g = {
            "last_backup": GaugeMetricFamily("casbackup_last_backup_timestamp_seconds",
                                             "Time of the newest snapshot of the application not dated after now", labels=["app"]),
            "bytes_added": GaugeMetricFamily("casbackup_last_backup_added_bytes",
                                             "Bytes the newest snapshot added to the repository", labels=["app"]),
            "duration": GaugeMetricFamily("casbackup_last_backup_duration_seconds",
                                          "How long the newest backup took", labels=["app"]),
            "files": GaugeMetricFamily("casbackup_last_backup_files", "Files in the newest snapshot",
                                       labels=["app"]),
            "snapshots": GaugeMetricFamily("casbackup_snapshots", "Snapshots of the application", labels=["app"]),
            "ver_time": GaugeMetricFamily("casbackup_last_verification_timestamp_seconds",
                                          "Time of the newest verification of the application", labels=["app"]),
            "ver_ok": GaugeMetricFamily("casbackup_last_verification_ok",
                                        "1 if the newest verification passed, 0 if it failed", labels=["app"]),
            "size": GaugeMetricFamily("casbackup_repository_size_bytes", "Bytes stored in the repository",
                                      labels=["repository"]),
            "up": GaugeMetricFamily("casbackup_repository_up", "1 if the repository opens", labels=["repository"]),
        }  # fmt: skip
        for key, handle in registry.handles.items():
            if not handle.location:
                continue
            try:
                snaps = handle.snapshots([])
                records = handle.records().records
                g["size"].add_metric([key], self._repo_size(key, handle))
                g["up"].add_metric([key], 1)
            except CasError:
                g["up"].add_metric([key], 0)
                continue
            now = self.service.clock()
            latest, counts = {}, {}
            for s in snaps:  # oldest first: later ones win
                if s.app and registry.repo_key_for(s.app) == key:
                    counts[s.app] = counts.get(s.app, 0) + 1
                    if _ts(s.time) <= now:
                        latest[s.app] = s
            for app, s in latest.items():
                g["last_backup"].add_metric([app], _ts(s.time))
                g["bytes_added"].add_metric([app], s.summary.bytes_added)
                g["duration"].add_metric([app], s.summary.duration_s)
                g["files"].add_metric([app], s.summary.files_total)
                g["snapshots"].add_metric([app], counts[app])
            newest: dict[str, Any] = {}
            for r in records:  # oldest first (records.sort_records): later ones win
                if r.app and registry.repo_key_for(r.app) == key and _ts(r.time) <= now:
                    newest[r.app] = r
            for app, r in newest.items():
                g["ver_time"].add_metric([app], _ts(r.time))
                g["ver_ok"].add_metric([app], 1 if r.ok else 0)
        yield from g.values()
        jobs = GaugeMetricFamily("casbackup_jobs", "Jobs in the state database by kind and state",
                                 labels=["app", "kind", "state"])  # fmt: skip
        if self.service.jobs is not None:
            for app, kind, state, n in self.service.jobs.counts_by_app():
                jobs.add_metric([app or "", kind, state], n)
        yield jobs


class Scoped:
    """The registry's samples limited to some applications (for app-scoped callers)."""

    def __init__(self, registry: CollectorRegistry, apps: frozenset[str]) -> None:
        self.registry = registry
        self.apps = apps

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            samples = [s for s in family.samples if s.labels.get("app") in self.apps]
            if samples:
                family.samples = samples
                yield family


class Metrics:
    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ServiceCollector(service)
        self._fingerprints: dict[str, object] = {}
        self.registry.register(self.collector)  # type: ignore[arg-type]

    def repo_size(self, key: str, handle: Any, fingerprint: object = None) -> int:
        """Bytes stored in a repository (every file in it), cached as for the scrapes, so the
        dashboard's repository health shows the same number as the metric. A ``fingerprint``
        that differs from the last call's (the dashboard passes its snapshot ids) measures
        again at once: a size from before the backup just shown would contradict the page."""
        if self._fingerprints.get(key, fingerprint) != fingerprint:
            self.collector._sizes.pop(key, None)
        self._fingerprints[key] = fingerprint
        return self.collector._repo_size(key, handle)

    def render(self, apps: frozenset[str] | None) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry if apps is None else Scoped(self.registry, apps))  # type: ignore[arg-type]
