"""What a recovery will do, decided before anything is touched.

`choose_snapshot` picks the snapshot (the newest one whose newest verification passed, unless
told otherwise); `build_plan` maps it onto the target: each source path of the snapshot goes to
`target/<its path>` (the target `/`: back in place; see layout.py), each database to where
the caller says. The plan is immutable; `--dry-run` prints it, `execute.recover` carries it
out.

Where data and credentials go is decided only on this machine: the target folder and
`--db-into` from the command line, and the local config's definition of the application's
databases (`RecoverOptions.configured`). A snapshot is data that anyone who can write the
repository with the key may have forged, so what it stores (`app_definition`'s hosts, ports,
users, `password_env`/`password_file`, database paths) is shown in the plan and the report,
never followed: no connection to a host only a snapshot names, no file read because a snapshot
names it. Files go below the target, each stored path component made harmless; in place only
the sources the local config lists are restored. An SQLite database goes where its path maps
into a recovered source; else to the local config's path (below the target, or in place);
else to `target/databases/<name>.sqlite`. Planning connects to nothing: a dry run changes
nothing and talks to no server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from casbackup.engines.base import (
    DatabaseSpec,
    canonical_engine_name,
    get_engine,
    resolve_password,
)
from casbackup.engines.sqlite import restore_path_problem
from casbackup.errors import CasError, NotFound, RecoveryError, UnverifiedSnapshot, UsageError
from casbackup.maintenance.rewrite import REWRITTEN_TAG
from casbackup.recovery.connection import confined_spec, connection_spec, describe
from casbackup.recovery.journal import Journal, journal_path, read_journal
from casbackup.recovery.layout import (
    below,
    component,
    configured,
    dest_paths,
    inside,
    is_in_place,
    not_empty,
    plain_absolute,
    space_warning,
    target_problem,
)
from casbackup.recovery.notices import not_in_snapshot, verification_warnings
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, Snapshot
from casbackup.repo.snapshotstore import no_snapshot_of
from casbackup.repo.tree import Node, NodeKind
from casbackup.units import plural
from casbackup.verify.dumps import (
    definition_specs,
    record_problem,
    stored_location,
    tree_path_parts,
)
from casbackup.verify.records import RecordSet, VerificationRecord, list_records


@dataclass(frozen=True)
class RecoverOptions:
    app: str
    target: str
    snapshot: str | None = None  # id, prefix or "latest"; None: the newest verified
    databases: bool = True
    db_into: Mapping[str, str] = field(default_factory=dict)  # name -> CONNECTION
    # The web service's recovery: a db_into may read no password source the config does not
    # name, and an SQLite one goes only below the target (connection.confined_problem)
    confined: bool = False
    # name -> the local config's definition of the application's database (never a snapshot's)
    configured: Mapping[str, DatabaseSpec] = field(default_factory=dict)
    # The local config's sources of the application: one the snapshot lacks is said
    configured_sources: tuple[str, ...] = ()
    overwrite_databases: bool = False
    # PostgreSQL: create the roles kept with each dump (its globals) before loading it; off
    # when the target server's roles are managed elsewhere (as `db restore --no-globals`)
    globals: bool = True
    dry_run: bool = False
    allow_unverified: bool = False
    report: str | None = None  # FILE: FILE.json and FILE.md; None: in the target
    workers: int = 2
    # An application with no snapshot is reported with the names of those that have some
    # (a mistyped --app); off where the caller may see only some applications (the service)
    name_apps: bool = True


@dataclass(frozen=True)
class FileItem:
    source: str  # path in the snapshot
    target: str  # folder (or file) it becomes
    restore_into: str  # the folder the restore writes into
    kind: str  # "dir" or "file"
    files: int
    bytes: int
    # Left half-restored by an interrupted recovery of this snapshot (its journal says so):
    # restored again, replacing what is there.
    resumed: bool = False
    # Restored whole by an earlier run of this recovery (the start time of that run; its
    # journal says so): left as it is, since the application may have been started on it.
    done_by: str = ""


@dataclass(frozen=True)
class DatabaseItem:
    record: DatabaseRecord
    spec: DatabaseSpec
    where: str  # readable target, no secrets
    overwrite: bool  # replace what is there (asked for, or the raw copy restored with the files)
    stored: str = "not recorded"  # where the snapshot says it lived: shown, never used
    # Loaded (or begun) by an interrupted recovery of this snapshot (its journal says so):
    # replaced, and kept in the journal of this run from its start.
    resumed: bool = False
    # Loaded whole by an earlier run of this recovery (that run's start time): left as it
    # is unless --overwrite-databases (the application may have written to it since).
    done_by: str = ""


@dataclass(frozen=True)
class RecoveryPlan:
    app: str
    snapshot: Snapshot
    verification: VerificationRecord | None
    target: str
    files: tuple[FileItem, ...]
    databases: tuple[DatabaseItem, ...]
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # what stops the recovery before it starts
    # When the chosen snapshot turns out damaged: the next older snapshot whose newest
    # verification passed, as advice ("... recover it with --snapshot ID"); "" when none.
    fallback: str = ""

    @property
    def bytes_total(self) -> int:
        return sum(f.bytes for f in self.files) + sum(d.record.size for d in self.databases)


def _describe_snap(snap: Snapshot, record: VerificationRecord | None) -> str:
    state = (
        "never verified"
        if record is None
        else "verification FAILED"
        if not record.ok
        else "verified"
    )
    return f"{snap.short_id} ({snap.time[:19].replace('T', ' ')} UTC, {state})"


def older_verified(repo: Repository, snap: Snapshot, records: RecordSet | None = None) -> str:
    """Advice naming the newest snapshot of `snap`'s application older than `snap` whose
    newest verification passed ("" when there is none): what a user can recover instead
    when `snap` turns out damaged."""
    latest = (records or list_records(repo)).latest_by_snapshot()
    older = [
        s
        for s in repo.list_snapshots(warnings=[])
        if s.app == snap.app and s.start_ns < snap.start_ns and s.id != snap.id
        and latest.get(s.identity) is not None and latest[s.identity].ok
    ]  # fmt: skip
    if not older:
        return ""
    best = older[-1]
    return (
        f"the next older verified snapshot is {_describe_snap(best, latest[best.identity])}: "
        f"recover it with --snapshot {best.short_id}"
    )


def choose_snapshot(
    repo: Repository, options: RecoverOptions, records: RecordSet | None = None
) -> tuple[Snapshot, VerificationRecord | None, list[str]]:
    """(snapshot, its newest verification record, warnings); refuses an unverified one."""
    records = records or list_records(repo)
    latest = records.latest_by_snapshot()
    every = repo.list_snapshots(warnings=[])
    snaps = [s for s in every if s.app == options.app]
    if not snaps:
        raise RecoveryError(no_snapshot_of(options.app, every if options.name_apps else ()))
    verified = [s for s in snaps if latest.get(s.identity) is not None and latest[s.identity].ok]
    newest_verified = (
        f"the newest verified one is {_describe_snap(verified[-1], latest[verified[-1].identity])}"
        if verified
        else "no snapshot of it is verified"
    )
    warnings: list[str] = []
    if options.snapshot:
        snap = repo.resolve_snapshot(options.snapshot, app=options.app, name_apps=options.name_apps)
        if snap.app != options.app:
            raise RecoveryError(
                f"snapshot {snap.short_id} belongs to {snap.app or 'no application'}, "
                f"not to {options.app!r}"
            )
    elif verified:
        snap = verified[-1]
        # A rewritten copy (`casbackup rewrite` without --forget) has its original's time:
        # of the two, the copy is what the user chose to keep (files taken out).
        copies = [s for s in verified if s.start_ns == snap.start_ns and REWRITTEN_TAG in s.tags]
        snap = copies[-1] if copies else snap
        warnings.extend(
            f"snapshot {_describe_snap(s, latest.get(s.identity))} is a rewritten copy of it "
            f"(files taken out) and is not verified: 'casbackup verify {s.short_id}' lets "
            "recover use it"
            for s in snaps
            if s.start_ns == snap.start_ns and REWRITTEN_TAG in s.tags and s not in verified
        )
        newer = [s for s in snaps if s.start_ns > snap.start_ns]
        if newer:
            warnings.append(
                f"{plural(len(newer), 'newer snapshot')} {'is' if len(newer) == 1 else 'are'} not verified (newest: "
                f"{_describe_snap(newer[-1], latest.get(newer[-1].identity))}); using the newest verified"
            )
    else:
        snap = snaps[-1]
    record = latest.get(snap.identity)
    if records.damaged:
        # A record cannot be read, so which snapshot it was about is unknown: it may have
        # been a newer, failed verification of the very snapshot chosen (the storage is
        # untrusted, and a damaged record is what an attacker or bit rot leaves).
        warnings.extend(records.damaged)
        warnings.append(
            f"{plural(len(records.damaged), 'verification record')} cannot be read, so the "
            f"verification state of snapshot {snap.short_id} may be out of date; 'casbackup "
            f"verify {snap.short_id}' settles it"
        )
    if record is None or not record.ok:
        if not options.allow_unverified:
            raise UnverifiedSnapshot(
                f"refusing to recover {options.app!r} from snapshot "
                f"{_describe_snap(snap, record)}; {newest_verified}",
                snap.short_id,
            )
        warnings.append(f"recovering from snapshot {_describe_snap(snap, record)} as asked")
    return snap, record, warnings


def _size_of(repo: Repository, node: Node) -> tuple[int, int]:
    if node.kind == NodeKind.FILE:
        return 1, node.size
    files = size = 0
    if node.subtree is not None:
        for _path, child in repo.walk(node.subtree):
            if child.kind == NodeKind.FILE:
                files += 1
                size += child.size
    return files, size


def _resumable(
    journal: Journal | None,
    app: str,
    snap: Snapshot,
    target: str,
    warnings: list[str],
    problems: list[str],
) -> Journal:
    """What an unfinished recovery left in `target` that this one may take over: all of its
    parts when it recovered the same application from the same snapshot; nothing (and a
    problem saying what to do) when it recovered another; nothing when there is no journal."""
    none = Journal(app, snap.identity, "", (), ())
    if journal is None:
        return none
    where = journal_path(target)
    # By identity: a tag change between the runs gives the snapshot a new id, not new data
    # (journals written before kept the id, which is the identity until a tag change).
    if journal.app != app or journal.snapshot not in (snap.identity, snap.id):
        problems.append(
            f"the target holds an unfinished recovery of {journal.app!r} from snapshot "
            f"{journal.snapshot[:8]} (started {journal.started[:19]}): finish it with "
            f"--app {journal.app} --snapshot {journal.snapshot[:8]}, or remove what it wrote "
            f"and {where}"
        )
        return none
    warnings.append(
        f"the target holds an unfinished recovery of this snapshot (started "
        f"{journal.started[:19]}, see {where}): what it finished is left as it is, what it "
        "began is restored again"
    )
    return journal


def _map_into_target(path: str, items: tuple[FileItem, ...]) -> str | None:
    """Where an original path lands in the target, when it lies under a recovered source.

    The path may come from a snapshot: one with `.`/`..`/empty components is not mapped (it
    could climb out of the target), nor is one that would replace a recovered folder.
    """
    if not plain_absolute(path):
        return None
    for item in items:
        src = item.source.rstrip("/")
        if path == src and item.kind == "file":
            return item.target
        if path.startswith(src + "/"):
            return item.target + path[len(src) :]
    return None


def build_plan(
    repo: Repository, options: RecoverOptions, records: RecordSet | None = None
) -> RecoveryPlan:
    """The plan for `options`; connects to no server in a dry run.

    What would make the recovery fail or harm the target is in `problems` (``recover``
    refuses to start then): a target that is not empty, a database that cannot be reached
    or already holds tables, and a snapshot whose folder listings cannot be read (damaged
    packs, a missing index): a source that cannot be read is never silently left out.
    Raises UnverifiedSnapshot, RecoveryError, UsageError (a --db-into naming no database).
    """
    records = records or list_records(repo)
    snap, record, warnings = choose_snapshot(repo, options, records)
    warnings.extend(verification_warnings(snap, record))
    target = os.path.abspath(options.target)
    problems: list[str] = []
    in_place = is_in_place(target)
    # In place, each source's own place is checked below (an ordinary user cannot write /
    # and needs not: the sources are in places of theirs).
    unwritable = None if in_place else target_problem(target)
    if unwritable:
        problems.append(unwritable)
    resumed = _resumable(read_journal(target), options.app, snap, target, warnings, problems)
    damaged = False
    items: list[FileItem] = []
    paths = tuple(p for p in snap.paths if isinstance(p, str))
    if len(paths) != len(snap.paths):
        warnings.append("the snapshot records source paths that are not text; they are skipped")
    warnings.extend(
        not_in_snapshot(
            snap, options.configured_sources, options.configured if options.databases else {}, paths
        )
    )
    for source, dest in dest_paths(target, paths).items():
        if in_place and not configured(source, options.configured_sources):
            # In place, the snapshot's paths would choose where files go on this machine.
            problems.append(
                f"source {source} is not among the sources the config gives {options.app!r}: "
                "not recovered in place (a snapshot never chooses where files go on this "
                "machine); recover it below a --target, or add it to the config"
            )
            continue
        try:
            node = repo.find_node(snap.root, source)
            # Every folder listing below the source is read now (the sizes need them): a
            # damaged one stops the plan here, named, rather than the restore half-way.
            files, size = _size_of(repo, node) if node is not None else (0, 0)
        except CasError as exc:
            # Damage (a damaged pack, a missing index), not an absent source: the recovery
            # would leave this source out, so it must not start (it used to be a warning,
            # and a recovery that restored nothing reported success).
            hint = (
                " ('casbackup check' says what is lost; 'casbackup repair index' rebuilds a "
                "lost index from the packs)"
                if isinstance(exc, NotFound)
                else ""
            )
            problems.append(
                f"source {source} cannot be read from snapshot {snap.short_id}: {exc}{hint}"
            )
            damaged = True
            continue
        if node is not None and node.kind == NodeKind.SYMLINK:
            # A backup stores what a symlink source points to as a source of its own
            # (backup_options.with_link_targets), recovered as such; the link is not.
            warnings.append(
                f"source {source} is a symlink (to {os.fsdecode(node.link_target)}) in the "
                "snapshot: the link is not recreated in the target"
            )
            continue
        if node is None or node.kind not in (NodeKind.DIR, NodeKind.FILE):
            warnings.append(f"source {source} is not a folder or file in the snapshot; skipped")
            continue
        if node.kind == NodeKind.FILE and os.path.basename(dest) != os.fsdecode(node.name):
            # The restore names a file as the snapshot's entry does (a forged source path
            # may say otherwise): the plan says where it really goes.
            dest = os.path.join(os.path.dirname(dest), component(os.fsdecode(node.name)))
            warnings.append(f"{source} will be restored as {dest}")
        kind = "dir" if node.kind == NodeKind.DIR else "file"
        into = dest if kind == "dir" else os.path.dirname(dest)
        refused = target_problem(dest) if in_place else None
        if refused:
            problems.append(f"source {source} cannot go back in place: {refused}")
            continue
        again = dest in resumed.files
        done = resumed.done_by(dest) if again and os.path.lexists(dest) else ""
        items.append(FileItem(source, dest, into, kind, files, size, again, done))
        if not_empty(dest) and not again:
            problems.append(
                f"{dest} already exists and is not empty (remove it, or recover below a --target)"
                if in_place
                else f"{dest} already exists in the target and is not empty (remove it, or "
                "choose another --target)"
            )
    databases = _plan_databases(snap, options, target, tuple(items), resumed, warnings, problems)
    local_bytes = sum(f.bytes for f in items) + sum(
        d.record.size
        for d in databases
        if d.spec.engine == "sqlite" and inside(d.spec.path, target)
    )
    short = None if unwritable else space_warning(target, local_bytes)
    if short:
        warnings.append(short)
    fallback = older_verified(repo, snap, records) if damaged else ""
    return RecoveryPlan(options.app, snap, record, target, tuple(items), databases,
                        tuple(warnings), tuple(problems), fallback)  # fmt: skip


def _plan_databases(
    snap: Snapshot,
    options: RecoverOptions,
    target: str,
    items: tuple[FileItem, ...],
    resumed: Journal,
    warnings: list[str],
    problems: list[str],
) -> tuple[DatabaseItem, ...]:
    names = {r.name for r in snap.databases if isinstance(r.name, str)}
    for name in options.db_into:
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise UsageError(
                f"--db-into names database {name!r}, not in the snapshot (it has: {known})"
            )
    if not options.databases:
        if snap.databases:
            warnings.append(
                f"{plural(len(snap.databases), 'database')} not recovered (--no-databases)"
            )
        return ()
    stored = definition_specs(snap.app_definition)  # shown, never followed
    out: list[DatabaseItem] = []
    for record in snap.databases:
        malformed = record_problem(record)
        if malformed is not None:
            problems.append(malformed)
            continue
        engine = canonical_engine_name(record.engine)
        was = stored_location(stored.get(record.name))
        local = options.configured.get(record.name)
        if local is not None and canonical_engine_name(local.engine) != engine:
            warnings.append(
                f"database {record.name!r}: the config defines it as {local.engine}, the dump is "
                f"{engine}; the config's definition is not used"
            )
            local = None
        try:
            tree_path_parts(record.path)
        except CasError as exc:
            problems.append(f"database {record.name!r}: {exc}")
            continue
        replaces_raw = False
        if record.name in options.db_into:
            spec = connection_spec(record.name, engine, options.db_into[record.name], local)
            if options.confined:
                spec, refused = confined_spec(spec, local, target, is_in_place(target))
                if refused:
                    problems.append(refused)
                    continue
        elif engine == "sqlite":
            # Where the files go (layout.py): where the local config's (else the stored)
            # path maps into a recovered source; else the config's path, below the target
            # (in place: that path); else target/databases/NAME.sqlite (a stored path is
            # never followed outside the recovered sources).
            source = local if local is not None and local.path else stored.get(record.name)
            original = source.path if source is not None else None
            original = original if isinstance(original, str) else ""
            mapped = _map_into_target(original, items) if original else None
            # A raw copy of the file restored with the sources is replaced by the dump,
            # which is the consistent one.
            replaces_raw = mapped is not None
            trusted = local is not None and local.path == original and plain_absolute(original)
            if mapped is None and trusted:
                mapped = original if is_in_place(target) else below(target, original)
            elif mapped is None and is_in_place(target):
                problems.append(
                    f"database {record.name!r}: the config gives it no path, so give "
                    f"--db-into {record.name}=PATH (the snapshot says it lived at "
                    f"{original or '?'}; in place, a snapshot never chooses where files go)"
                )
                continue
            elif mapped is None:
                mapped = os.path.join(target, "databases", f"{component(record.name)}.sqlite")
                warnings.append(
                    f"database {record.name!r} lived at {original or '?'} outside the recovered "
                    f"sources; it goes to {mapped} (use --db-into to choose)"
                )
            spec = DatabaseSpec(name=record.name, engine="sqlite", path=mapped,
                                options=dict(local.options) if local is not None else {})  # fmt: skip
        elif local is not None:
            spec = replace(local, engine=engine)
        else:
            problems.append(
                f"database {record.name!r}: the config does not define it, so give "
                f"--db-into {record.name}=CONNECTION (the snapshot says it lived at {was}; a "
                "snapshot never chooses where casbackup connects or which secrets it reads)"
            )
            continue
        where = describe(spec)
        # A database an interrupted run of this recovery began to load is replaced too.
        again = where in resumed.databases
        replace_it = options.overwrite_databases or replaces_raw or again
        done = resumed.done_by(where) if again and not options.overwrite_databases else ""
        if done and not options.dry_run and _gone(spec):
            done = ""  # removed since (the operator starting over): loaded again
        item = DatabaseItem(record, spec, where, replace_it, was, again, done)
        # A path inside a target already refused (read-only, say) says nothing new.
        inside_refused = (
            not is_in_place(target)
            and target_problem(target) is not None
            and inside(spec.path, target)
        )
        problem = _preflight(item, connect=not options.dry_run, check_path=not inside_refused)
        if problem:
            problems.append(problem)
        out.append(item)
    return tuple(out)


def _gone(spec: DatabaseSpec) -> bool:
    """Whether the database an earlier run loaded is no longer there (dropped, or emptied):
    False when that cannot be told (a server that does not answer: the run says so)."""
    if spec.engine == "sqlite":
        return not (spec.path and os.path.exists(spec.path))
    try:
        engine = get_engine(spec.engine)
        holds = getattr(engine, "holds_content", None)
        return not (holds(spec) if holds is not None else engine.row_counts(spec))
    except CasError:
        return False


def _preflight(item: DatabaseItem, *, connect: bool, check_path: bool = True) -> str | None:
    """Why loading into this target would fail or be refused; None when it looks fine.

    Every spec here comes from the command line or the local config, so reading its password
    source is allowed. `connect=False` (a dry run) asks no server whether the target database
    already holds tables: a dry run makes no connection. A server database that cannot be
    reached here is left to the load to report: it may not exist yet (it is created on load)
    and the server's error says more than a guess would.
    """
    spec = item.spec
    try:
        engine = get_engine(spec.engine)
        engine.check_available()
        if spec.engine != "sqlite":
            resolve_password(spec)  # a missing password variable must stop the plan, not the load
    except CasError as exc:
        text = str(exc)
        return text if text.startswith("database ") else f"database {spec.name!r}: {text}"
    if spec.engine == "sqlite" and spec.path and check_path:
        # A path under a file, in a folder the user cannot write, behind another user's link:
        # found before the files are restored, not after.
        problem = restore_path_problem(spec)
        if problem:
            return problem
    if item.overwrite:
        return None
    if spec.engine == "sqlite":
        if spec.path and os.path.exists(spec.path) and os.path.getsize(spec.path) > 0:
            return f"database {spec.name!r}: {spec.path} already exists (use --overwrite-databases)"
        return None
    if not connect:
        return None
    try:
        # What the load itself refuses: views, sequences and routines count, not only
        # tables (a database holding only a view passed here and was refused half-way).
        holds = getattr(engine, "holds_content", None)
        full = holds(spec) if holds is not None else bool(engine.row_counts(spec))
    except CasError:
        return None
    if not full:
        return None
    try:
        counts = engine.row_counts(spec)
    except CasError:
        counts = {}
    what = plural(len(counts), "table") if counts else "no table, but views, sequences or routines"
    return (
        f"database {spec.name!r}: {item.where} already exists and is not empty ({what}; "
        "use --overwrite-databases to replace it)"
    )
