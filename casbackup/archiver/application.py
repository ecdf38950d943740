"""Backing up an application: its sources and every database, in one snapshot.

An `AppConfig` (from the config file) becomes `BackupOptions`: its sources and excludes, one
`StreamSpec` per database (the engine's dump is streamed into the chunk store as
`/.databases/<name>.<ext>`), and the application's definition without secrets, stored in the
snapshot so that a recovery can rebuild the application from the repository alone (borgmatic
stores its config in every archive for the same reason).

A dump that fails fails the whole backup (exit 27) and no snapshot is written: a snapshot never
claims a dump it does not have. A dump that succeeds but is much smaller than the previous dump
of the same database is suspicious (a wrong database, a dropped table) and produces a warning
in the result, not a failure: shrinking can be legitimate.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from casbackup.archiver.backup import BackupOptions, BackupResult, StreamSpec, run_backup
from casbackup.archiver.backup_options import reachable_sources, with_link_targets
from casbackup.archiver.excludes import CACHEDIR_TAG, Excluder
from casbackup.config.model import AppConfig, SnapshotsConfig
from casbackup.engines.base import (
    DatabaseSpec,
    DumpInfo,
    DumpStream,
    canonical_engine_name,
    get_engine,
)
from casbackup.errors import DatabaseError, SnapshotProviderError
from casbackup.fssnap.base import ProviderSettings, SnapshotInvalid
from casbackup.fssnap.session import FrozenSources, FsSnapshotPlan, frozen_sources
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, FsSnapshotRecord, Snapshot
from casbackup.reporter import NULL_REPORTER, Reporter
from casbackup.units import human_bytes

# The dump's file name must be known before the dump starts (the tree entry is named then).
DUMP_EXTENSIONS = {"sqlite": "sqlite", "postgresql": "pgdump", "mysql": "sql"}
SHRINK_RATIO = 0.5  # a dump below this fraction of the previous one is reported
# Engine options whose values could be secrets are left out of the stored definition.
_SECRET_WORDS = ("pass", "secret", "token", "key")


@dataclass
class AppBackupResult:
    app: str
    result: BackupResult
    dump_warnings: list[str] = field(default_factory=list)

    @property
    def snapshot(self) -> Snapshot | None:
        return self.result.snapshot


def dump_filename(spec: DatabaseSpec) -> str:
    engine = canonical_engine_name(spec.engine)
    ext = DUMP_EXTENSIONS.get(engine) or getattr(get_engine(engine), "file_extension", "dump")
    return f"{spec.name}.{ext}"


def _opener(spec: DatabaseSpec, claims: dict[str, str] | None = None) -> Any:
    def open_dump() -> DumpStream:
        stream = get_engine(spec.engine).dump(spec)
        return _ClaimingDump(stream, claims) if claims else stream

    return open_dump


class _ClaimingDump(io.RawIOBase):
    """A dump whose info's properties also name the files stored beside it (``claims``,
    property -> file name). The claim is added here, where those files are stored, so a
    record never names a file its snapshot does not hold."""

    def __init__(self, inner: DumpStream, claims: dict[str, str]) -> None:
        super().__init__()
        self._inner = inner
        self._claims = claims

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._inner.readinto(b)  # type: ignore[no-any-return]

    def finish(self) -> DumpInfo:
        info = self._inner.finish()
        return replace(info, properties={**info.properties, **self._claims})

    def close(self) -> None:
        self._inner.close()
        super().close()


def stream_specs(databases: tuple[DatabaseSpec, ...]) -> tuple[StreamSpec, ...]:
    """One stream per database, each preceded by the files its engine keeps beside the dump
    (`extra_dumps`: PostgreSQL's cluster globals), which get no database record of their own:
    the dump's record names them (its properties, e.g. "globals": "main.globals.sql").

    DatabaseError when two files would get the same name in /.databases/ (a tree cannot hold
    both)."""
    specs: list[StreamSpec] = []
    for db in databases:
        engine = canonical_engine_name(db.engine)
        extra = getattr(get_engine(engine), "extra_dumps", None)
        claims: dict[str, str] = {}
        for key, filename, opener in extra(db) if extra is not None else ():
            specs.append(StreamSpec(db.name, filename, engine, opener, record=False))
            claims[key] = filename
        specs.append(StreamSpec(db.name, dump_filename(db), engine, _opener(db, claims)))
    seen: set[str] = set()
    for spec in specs:
        if spec.filename in seen:
            raise DatabaseError(
                f"database {spec.name!r}: two dumps would both be stored as "
                f"/.databases/{spec.filename}: rename one of the databases"
            )
        seen.add(spec.filename)
    return tuple(specs)


def database_definition(spec: DatabaseSpec) -> dict[str, Any]:
    """Where the database lives and where its password comes from; never the password."""
    out: dict[str, Any] = {"name": spec.name, "engine": canonical_engine_name(spec.engine)}
    for key in ("path", "host", "port", "user", "database", "password_env", "password_file"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = value
    options = {
        k: v for k, v in spec.options.items() if not any(w in k.lower() for w in _SECRET_WORDS)
    }
    if options:
        out["options"] = dict(sorted(options.items()))
    return out


def app_definition(app: AppConfig) -> dict[str, Any]:
    """The application as configured, JSON-ready, without secrets."""
    r = app.retention
    return {
        "name": app.name,
        "description": app.description,
        "sources": list(app.sources),
        "excludes": list(app.excludes),
        "databases": [database_definition(db) for db in app.databases],
        "default_backup_type": app.default_backup_type,
        "schedule": app.schedule,
        "retention": {
            "keep_last": r.keep_last,
            "keep_hourly": r.keep_hourly,
            "keep_daily": r.keep_daily,
            "keep_weekly": r.keep_weekly,
            "keep_monthly": r.keep_monthly,
            "keep_yearly": r.keep_yearly,
            "keep_within": r.keep_within,
            "keep_tags": list(r.keep_tags),
        },  # fmt: skip
        "verification": {
            "required_files": list(app.verification.required_files),
            "auto_verify": app.verification.auto_verify,
        },
    }


def database_files(app: AppConfig) -> tuple[str, ...]:
    """The files of the application's file-based databases (SQLite), as absolute paths.

    Their engine dumps them consistently; the backup leaves them (and their -wal, -shm,
    -journal companions) out of the file walk, where a live database would be read while
    it changes. A recovery restores them from the dump.
    """
    return tuple(sorted({os.path.abspath(db.path) for db in app.databases if db.path is not None}))


def backup_options(
    app: AppConfig,
    *,
    backup_type: str | None = None,
    tags: tuple[str, ...] = (),
    extra_excludes: tuple[str, ...] = (),
    exclude_if_present: tuple[str, ...] = (),
    exclude_larger_than: int | None = None,
    one_file_system: bool = False,
    dry_run: bool = False,
    workers: int = 2,
    parent: str | None = None,
    xattrs: bool = True,
    snapshots: SnapshotsConfig | None = None,
    delta_files: int | None = None,
) -> BackupOptions:
    """The backup of an `AppConfig`: sources, excludes, databases and its definition.

    `snapshots` is the config's `[snapshots]` section: with it (or the application's own
    `snapshot` setting) the sources are read from file-system snapshots (see fs_plan).
    `delta_files` (bytes; 0 off) overrides the application's own `delta_files` setting.
    """
    return replace(
        source_options(
            app,
            extra_excludes=extra_excludes,
            exclude_if_present=exclude_if_present,
            exclude_larger_than=exclude_larger_than,
            one_file_system=one_file_system,
            snapshots=snapshots,
        ),  # fmt: skip
        type=backup_type or app.default_backup_type,
        tags=tags,
        dry_run=dry_run,
        workers=workers,
        streams=stream_specs(app.databases),
        app_definition=app_definition(app),
        parent=parent,
        xattrs=xattrs,
        delta_files=app.delta_files if delta_files is None else delta_files,
    )


def source_options(
    app: AppConfig,
    *,
    extra_excludes: tuple[str, ...] = (),
    exclude_if_present: tuple[str, ...] = (),
    exclude_larger_than: int | None = None,
    one_file_system: bool = False,
    snapshots: SnapshotsConfig | None = None,
) -> BackupOptions:
    """What the backup of an `AppConfig` reads from its file systems, and nothing else: its
    sources, its excludes then `extra_excludes` (its own exclude_caches/exclude_if_present
    with `exclude_if_present` added, its exclude_larger_than unless `exclude_larger_than`
    is given), the database files it dumps instead of
    reading, and its file-system snapshots (see fs_plan). `backup_options` builds on this;
    so does the source warmer (archiver/warm.py `warmer_for`), which runs before the
    repository is opened and so must not start the databases' engines."""
    return BackupOptions(
        paths=tuple(app.sources),
        app=app.name,
        excludes=(*app.excludes, *extra_excludes),
        exclude_if_present=tuple(
            dict.fromkeys(
                (
                    *((CACHEDIR_TAG,) if app.exclude_caches else ()),
                    *app.exclude_if_present,
                    *exclude_if_present,
                )
            )
        ),  # fmt: skip
        exclude_larger_than=(
            app.exclude_larger_than if exclude_larger_than is None else exclude_larger_than
        ),
        one_file_system=one_file_system,
        database_files=database_files(app),
        fs_plan=fs_plan(app, snapshots or SnapshotsConfig()),
    )


def fs_plan(app: AppConfig, snapshots: SnapshotsConfig) -> FsSnapshotPlan | None:
    """Which file-system snapshots the application's backup takes, or None for none.

    The application's `snapshot` ("btrfs", "zfs", "lvm", "auto" or "none") wins; without
    it, the `[snapshots]` section's provider applies when the section is enabled.
    """
    choice = app.snapshot
    if choice is None and snapshots.enabled:
        choice = snapshots.provider
    if choice is None or choice == "none":
        return None
    return FsSnapshotPlan(
        provider=choice,
        auto_cleanup=snapshots.auto_cleanup,
        max_snapshots=snapshots.max_snapshots,
        settings=ProviderSettings(lvm_snapshot_size=snapshots.lvm_snapshot_size),
    )


def dump_size_warnings(snapshot: Snapshot, earlier: list[Snapshot]) -> list[str]:
    """Warn about dumps under SHRINK_RATIO of the latest earlier dump of the same database.

    `earlier` is oldest first, as `Repository.list_snapshots` returns it.
    """
    warnings = []
    for record in snapshot.databases:
        previous = _previous_record(record, earlier)
        if previous is None:
            continue
        prev_snap, prev = previous
        if prev.size > 0 and record.size < prev.size * SHRINK_RATIO:
            warnings.append(
                f"database {record.name!r}: dump is {human_bytes(record.size)}, less than half of the "
                f"previous one ({human_bytes(prev.size)} in snapshot {prev_snap.short_id}); "
                "check that no data was lost"
            )
    return warnings


def _previous_record(
    record: DatabaseRecord, earlier: list[Snapshot]
) -> tuple[Snapshot, DatabaseRecord] | None:
    for snap in reversed(earlier):
        for old in snap.databases:
            if old.name == record.name and old.engine == record.engine:
                return snap, old
    return None


def backup_application(
    repo: Repository, options: BackupOptions, reporter: Reporter = NULL_REPORTER
) -> AppBackupResult:
    """Run the backup built by `backup_options`; add the dump-size guard's warnings."""
    assert options.app is not None
    earlier = [s for s in repo.list_snapshots(warnings=[]) if s.app == options.app]
    try:
        if options.fs_plan is None:
            result = run_backup(repo, options, reporter)
        else:
            # The snapshots exist from before the first file is read until after the last
            # dump: files and dumps describe the same moment as closely as the engines allow.
            # A source that is a symlink is stored as the link, and what it points to as a
            # source of its own (run_backup): that one is what must be frozen.
            # Only the sources there are: one missing is the backup's warning (run_backup:
            # the others are stored, exit 3), as without file-system snapshots; freezing
            # what would hold it snapshotted a whole file system's top for nothing. With
            # none there, the session says so (exit 23) before taking any snapshot.
            given = tuple(os.path.abspath(p) for p in options.paths)
            present = reachable_sources(given)[0] or given
            linked, _notes = with_link_targets(present)
            with frozen_sources(
                options.app,
                linked,
                options.fs_plan,
                reporter.info,
                reporter.warning,
                left_out=_left_out_by(options),
            ) as frozen:
                records = tuple(
                    FsSnapshotRecord(s.source, s.provider, s.origin, s.time) for s in frozen.sources
                )
                frozen_options = replace(
                    options,
                    read_from=frozen.read_from,
                    excludes=(*options.excludes, *frozen.excludes),
                    fs_snapshots=records,
                    before_save=frozen.check,
                )
                try:
                    result = run_backup(repo, frozen_options, reporter)
                except Exception:
                    _blame_a_full_snapshot(frozen)
                    raise
    except DatabaseError as exc:
        raise DatabaseError(
            f"backup of application {options.app!r} failed, no snapshot was saved: {exc}"
        ) from None
    warnings = dump_size_warnings(result.snapshot, earlier) if result.snapshot else []
    for message in warnings:
        reporter.warning(message)
    return AppBackupResult(options.app, result, warnings)


def _blame_a_full_snapshot(frozen: FrozenSources) -> None:
    """A backup that failed reading from an LVM snapshot that filled up (every read of it
    fails: "cannot read source ... Input/output error") fails for that reason, said so."""
    try:
        frozen.check()
    except SnapshotInvalid:
        raise
    except SnapshotProviderError:
        pass  # cannot tell (lvs failed): the backup's own error stands


def _left_out_by(options: BackupOptions) -> Callable[[str], bool]:
    """Whether the walk leaves a path out whatever it holds: a file system mounted inside a
    frozen source is then no reason to refuse the snapshot (fssnap/session.py)."""
    if options.one_file_system:
        return lambda _path: True
    return Excluder(list(options.excludes)).excluded


def restore_companions(
    repo: Repository, snapshot: Snapshot, record: DatabaseRecord, spec: DatabaseSpec
) -> tuple[list[str], list[str]]:
    """Before a dump is loaded: apply what its engine kept beside it (PostgreSQL's cluster
    globals, MariaDB's accounts; named by the record's properties "globals"). Returns (info
    lines, warnings).

    Never fatal: a missing or refused globals file is a warning, and the dump still loads
    (its privileges pass then names what could not be granted). Raises DatabaseError only
    for a record naming something that is no file name (an untrusted record)."""
    from casbackup.archiver.stream import ChunkReader
    from casbackup.engines.pg_globals import recorded_globals
    from casbackup.errors import NotFound

    engine_name = canonical_engine_name(record.engine)
    engine = get_engine(engine_name)
    restore_globals = getattr(engine, "restore_globals", None)
    # PostgreSQL's cluster globals (roles), MariaDB's accounts (engines/my_users.py).
    name = recorded_globals(record.properties) if restore_globals is not None else None
    if name is None or restore_globals is None:
        return [], []
    what = "roles" if engine_name == "postgresql" else "accounts"
    path = posixpath.join(posixpath.dirname(record.path), name)
    try:
        node = repo.find_node(snapshot.root, path)
    except NotFound:
        node = None
    if node is None:
        return [], [f"database {record.name!r}: snapshot records {path} but its tree lacks it; "
                    f"{what} were not restored"]  # fmt: skip
    reader = ChunkReader.for_node(repo, node, name=f"{path} in snapshot {snapshot.short_id}")
    try:
        summary, warnings = restore_globals(spec, reader)
    except DatabaseError as exc:
        return [], [f"database {record.name!r}: {what} from the backup not restored: {exc}"]
    finally:
        reader.close()
    return [summary], list(warnings)
