"""The repositories the service serves, and which application lives in which.

The config's top-level ``[repository]`` is the default (``-r``/``CASBACKUP_REPO`` override its
location, as for the CLI); an application may name its own ``[applications.repository]``. Each
distinct location is one `RepoHandle`, keyed ``default`` or ``app:<name>``. Distinct means
by ``access.canonical_location``: an application's repository spelled through a symlink, with
``./`` or a trailing slash, or an S3 bucket written another way is the handle it names again
(``app:<name>`` stays a name for it), so its jobs share that repository's queue. Two
locations that only the storage knows to be one (two mounts of one NFS export) have two
handles with one ``identity``: the repository's id, which the job queue goes by (jobs.py).

The service process holds one open `Repository` per location for reads (listings, browsing,
downloads): the repository's LMDB index cache must not be opened twice in one process. Jobs run
in worker processes that open their own (see jobs.py); after a job writes, ``refresh`` brings
this process's view up to date.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from casbackup import access, plugins
from casbackup.config import AppConfig, Config, find_config_path, load_config
from casbackup.errors import CasError, NotFound, UsageError
from casbackup.repo.localstate import screen_snapshots
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.server.settings import Settings
from casbackup.threadsig import quiet_thread
from casbackup.verify.records import RecordSet, VerificationRecord
from casbackup.vfs.cache import WeightedLru

DEFAULT = "default"
IDENTITY_WAIT = 10.0  # seconds RepoHandle.identity waits for the storage to answer

log = logging.getLogger("casbackup.server")


class _IdentityProbe:
    """One read of a repository's plaintext config on its own daemon thread: ``found`` is
    ``id:<its id>`` once read, None when the read failed; ``done`` is set either way."""

    def __init__(self, location: str | None, s3: dict[str, str]) -> None:
        self.location, self.s3 = location, s3
        self.found: str | None = None
        self.done = threading.Event()
        self._thread = quiet_thread(self._run, name="casbackup-repo-identity")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from casbackup.repo.config import RepoConfig

        try:
            backend = access.open_backend(self.location, self.s3 or None)
            try:
                self.found = "id:" + RepoConfig.decode(backend.get("config")).id
            finally:
                with suppress(Exception):
                    backend.close()
        except Exception:  # noqa: BLE001 - unreadable now: the caller uses the location
            self.found = None
        finally:
            self.done.set()


@dataclass
class RepoHandle:
    key: str
    location: str | None
    source: access.PasswordSource
    s3: dict[str, str] = field(default_factory=dict)  # the config's S3 keys for s3: locations
    _repo: Repository | None = None
    _vfs: Any = None
    _snaps: dict[str, Snapshot] = field(default_factory=dict)
    # Snapshots never change once written: their JSON documents and rendered folder listings
    # are kept (bounded by bytes) so that a warm listing is a lookup, not a rebuild.
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _records: dict[str, VerificationRecord] = field(default_factory=dict)
    listings: WeightedLru[bytes] = field(default_factory=lambda: WeightedLru(64 << 20, len))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _logged: set[str] = field(default_factory=set)
    _identity: str | None = None
    _probe: _IdentityProbe | None = None

    def identity(self) -> str:
        """What the repository is, for the job queue: ``id:<its id>`` from its plaintext
        config (read once), or ``at:<canonical location>`` while that cannot be read (not
        there yet, unreachable, or not answering within ``IDENTITY_WAIT`` seconds: tried
        again next time). Never raises and never waits longer than ``IDENTITY_WAIT``: the
        scheduler's thread and API requests call it, and a storage that hangs (a hard NFS
        mount, a stalled connection) must not freeze them. One read at a time per handle;
        a read that hangs is left to finish (or not) on its own daemon thread."""
        with self._lock:
            if self._identity is not None:
                return self._identity
            probe = self._probe
            if probe is None or probe.done.is_set():
                probe = self._probe = _IdentityProbe(self.location, self.s3)
                probe.start()
        if probe.done.wait(IDENTITY_WAIT) and probe.found is not None:
            with self._lock:
                self._identity = probe.found
            return probe.found
        if not probe.done.is_set():
            key = "identity-wait"
            if key not in self._logged:
                self._logged.add(key)
                log.warning(
                    "repository %s did not answer within %.0f s; its jobs queue by its "
                    "location until it does", self.location, IDENTITY_WAIT,
                )  # fmt: skip
        return "at:" + access.canonical_location(self.location or "")

    def password(self) -> bytes:
        password = access.read_password(self.source)
        if password is None:
            raise UsageError(
                f"no passphrase for repository {self.location}: set CASBACKUP_PASSWORD, "
                "--password-file, or the config's [repository] password_file/password_env/"
                "password_command"
            )
        return password

    def repo(self) -> Repository:
        """The service's read handle, opened on first use (raises the open's errors)."""
        with self._lock:
            if self._repo is None:
                self._repo = access.open_repository(self.location, self.password(), self.s3 or None)
            return self._repo

    def vfs(self) -> Any:
        """The file-system view used for browsing and downloads (casbackup/vfs)."""
        repo = self.repo()
        with self._lock:
            if self._vfs is None:
                from casbackup.vfs import Vfs

                self._vfs = Vfs(repo, refresh_seconds=5.0)
            return self._vfs

    def snapshots(self, warnings: list[str]) -> list[Snapshot]:
        """Every readable snapshot, oldest first. Snapshots never change once written, so each
        is read and decrypted once; later calls only list the folder (1,000 snapshots: one
        listing instead of 1,000 reads)."""
        repo = self.repo()
        with self._lock:
            # The same screening as ``Repository.list_snapshots``: a snapshot this client
            # forgot that is back (a rollback or a planted copy) is left out, and the
            # repository's alerts say so. The record is re-read first: a worker process of
            # this service (the same client) may have forgotten snapshots since.
            repo.state.update(lambda _doc: False)
            ids, alerts = screen_snapshots(repo.state, repo.snapshot_ids())
            for message in alerts:
                repo.alert(message)
            known = dict(self._snaps)
        self._log_alerts(repo)
        current: dict[str, Snapshot] = {}
        for fid in ids:
            snap = known.get(fid)
            if snap is None:
                try:
                    snap = repo.load_snapshot(fid)
                except CasError as exc:
                    warnings.append(f"snapshot {fid[:8]} is unreadable: {exc}")
                    continue
            current[fid] = snap
        with self._lock:
            self._snaps = current
            for gone in set(self.docs) - set(current):
                del self.docs[gone]
        return sorted(current.values(), key=lambda s: (s.start_ns, s.id))

    def alerts(self) -> list[str]:
        """The repository's rollback and tampering alerts (``Repository.alerts``: from the local
        state record when it was opened, and from screening the snapshot listing, done here
        too so that a status call sees a snapshot put back since the last listing). Each alert
        is logged once per process. Raises the open's errors."""
        self.snapshots([])
        return list(self.repo().alerts)

    def _log_alerts(self, repo: Repository) -> None:
        with self._lock:
            fresh = [a for a in repo.alerts if a not in self._logged]
            self._logged.update(fresh)
        for message in fresh:
            log.warning("repository %s: %s", self.key, message)

    def records(self) -> RecordSet:
        """Every readable verification record, oldest first; each read once (they never change)."""
        from casbackup.verify.records import DIRECTORY, load_record, sort_records

        repo = self.repo()
        out = RecordSet()
        with self._lock:
            known = dict(self._records)
        current: dict[str, VerificationRecord] = {}
        for name, _size in repo.backend.list(DIRECTORY + "/"):
            rid = name.rsplit("/", 1)[1]
            record = known.get(rid)
            if record is None:
                try:
                    record = load_record(repo, rid)
                except CasError as exc:
                    out.warnings.append(f"verification record {rid[:8]} is unreadable: {exc}")
                    continue
            current[rid] = record
        with self._lock:
            self._records = current
        out.records = list(current.values())
        sort_records(out.records)  # a record dated ahead by a wrong clock is not the newest
        return out

    def refresh(self) -> None:
        """See what a worker process wrote: new index files and snapshots."""
        with self._lock:
            repo, vfs = self._repo, self._vfs
        if repo is not None:
            repo.sync_index()
        if vfs is not None:
            vfs.refresh()

    def close(self) -> None:
        with self._lock:
            if self._vfs is not None:
                self._vfs.close()  # its read-ahead threads (an object store's)
            if self._repo is not None:
                self._repo.close()
            self._repo = None
            self._vfs = None


class Registry:
    """The loaded config and a handle per repository location."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        path = find_config_path(settings.config_path)
        if settings.config_path and path is None:
            raise UsageError(f"config file {settings.config_path} not found")
        self.config: Config = load_config(path) if path is not None else Config()
        plugins.configure(
            enabled=self.config.plugins.enabled, offline_mode=self.config.plugins.offline_mode
        )
        top = self.config.repository
        cli_source = access.PasswordSource(settings.password_file, settings.password_command)
        source = cli_source if cli_source.given else access.PasswordSource(
            top.password_file, top.password_command, top.password_env
        )  # fmt: skip
        self.handles: dict[str, RepoHandle] = {
            DEFAULT: RepoHandle(DEFAULT, settings.repo or top.location, source, top.s3_settings())
        }
        self.app_repo: dict[str, str] = {}
        self.aliases: dict[str, str] = {}  # app:<name> of a location another key has
        places: dict[str, str] = {}
        if self.handles[DEFAULT].location:
            places[access.canonical_location(self.handles[DEFAULT].location or "")] = DEFAULT
        for app in self.config.applications:
            own = getattr(app, "repository", None)
            if own is not None and own.location:
                key = f"app:{app.name}"
                place = access.canonical_location(own.location)
                if place in places:  # one repository, one handle and one job queue
                    self.app_repo[app.name] = self.aliases[key] = places[place]
                    log.info("application %s: its repository %s is repository %s",
                             app.name, own.location, places[place])  # fmt: skip
                    continue
                places[place] = key
                own_source = access.PasswordSource(
                    own.password_file, own.password_command, own.password_env
                )
                # No password source of its own: the same one as the default repository.
                self.handles[key] = RepoHandle(
                    key, own.location, own_source if own_source.given else source,
                    own.s3_settings() or top.s3_settings(),
                )  # fmt: skip
                self.app_repo[app.name] = key
            else:
                self.app_repo[app.name] = DEFAULT

    def nothing_to_serve(self) -> str | None:
        """Why this service has nothing to serve, or None: no config file was found and no
        repository was given (a forgotten ``--config``), so every page would be empty and
        no schedule would ever run, without a word of why."""
        if self.config.source is not None or any(h.location for h in self.handles.values()):
            return None
        return (
            "no config file was found and no repository was given, so there is no application "
            "or repository to serve: start the service with --config FILE (or set "
            "CASBACKUP_CONFIG, or create ./casbackup.toml or ~/.config/casbackup/config.toml), "
            "or -r REPO for a repository alone"
        )

    def app(self, name: str) -> AppConfig | None:
        return self.config.app(name)

    def repo_key_for(self, app: str | None) -> str:
        """The repository an application's snapshots live in (the default for unknown apps)."""
        return self.app_repo.get(app or "", DEFAULT)

    def key(self, key: str) -> str:
        """The handle's key for ``key``, which may be an alias (``app:<name>`` of a location
        another key has); raises NotFound for an unknown one."""
        key = self.aliases.get(key, key)
        if key not in self.handles:
            raise NotFound(f"no repository {key!r}")
        return key

    def handle(self, key: str) -> RepoHandle:
        return self.handles[self.key(key)]

    def adopt(self, old: Registry) -> None:
        """Keep ``old``'s open handles for locations that did not change (a config reload):
        a repository's index cache must not be opened twice in one process."""
        for key, handle in list(self.handles.items()):
            previous = old.handles.get(key)
            if previous is not None and previous.location == handle.location:
                self.handles[key] = previous
        kept = {id(h) for h in self.handles.values()}
        for handle in old.handles.values():
            if id(handle) not in kept:
                handle.close()

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
