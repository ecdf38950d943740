"""Carry out a recovery plan: re-check, restore files, load databases, write the report.

Order protects the target: the plan is refused before anything is written if a target folder
or database is not empty; the re-check runs before the first byte is restored, and a damaged
snapshot stops the recovery with the target untouched (except for the report). After that,
each part (one source folder, one database) is restored on its own: one failing part does not
stop the others, and the report says exactly which parts are back.

Between the re-check and the first byte, a journal goes into the target (`journal.py`); it is
removed when the recovery succeeded. A rerun after a kill, a crash or a failed part finds it
and restores what the earlier run began again instead of refusing a target that is not empty.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from casbackup import __version__
from casbackup.archiver.application import restore_companions
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.restore_files import RestoreStopped
from casbackup.archiver.stream import ChunkReader
from casbackup.engines.base import get_engine
from casbackup.errors import CasError, Interrupted, RecoveryError
from casbackup.recovery.journal import (
    Journal,
    JournalWriter,
    database_locks,
    remove_journal,
    target_lock,
)
from casbackup.recovery.layout import component, is_in_place
from casbackup.recovery.parents import Parents
from casbackup.recovery.plan import (
    DatabaseItem,
    FileItem,
    RecoverOptions,
    RecoveryPlan,
    build_plan,
    older_verified,
)
from casbackup.recovery.recheck import Recheck, recheck
from casbackup.recovery.report import report_paths, write_report
from casbackup.repo.localstate import state_root
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import now_utc
from casbackup.repo.tree import NodeKind
from casbackup.reporter import NULL_REPORTER, Reporter
from casbackup.units import plural
from casbackup.verify.dumps import compare_counts, strict_counts

REPORT_NAME = "recovery-report"


@dataclass
class RecoveryResult:
    plan: RecoveryPlan
    report: dict[str, Any] | None = None  # None for a dry run
    report_files: tuple[str, str] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_failed(self) -> None:
        if self.errors:
            where = f"; report: {self.report_files[0]}" if self.report_files else ""
            raise RecoveryError(
                f"recovery of {self.plan.app!r} from snapshot {self.plan.snapshot.short_id} "
                f"failed in {plural(len(self.errors), 'place')}: {self.errors[0]}{where}"
            )


def report_base(options: RecoverOptions) -> str:
    """Where the report goes (FILE for FILE.json and FILE.md): --report, else in the
    target; in place (the target `/`), in the current folder, named by the application
    (the root of the machine is no place for it), or in this user's state folder when the
    current folder cannot be written (an ordinary user in /: the recovery that put
    everything back failed for want of a place for its report)."""
    if options.report:
        return os.path.abspath(options.report)
    target = os.path.abspath(options.target)
    if is_in_place(target):
        here = os.getcwd()
        folder = here if os.access(here, os.W_OK | os.X_OK) else state_root()
        return os.path.join(folder, f"{REPORT_NAME}-{component(options.app)}")
    return os.path.join(target, REPORT_NAME)


def recover(
    repo: Repository,
    options: RecoverOptions,
    reporter: Reporter = NULL_REPORTER,
    planned: Callable[[RecoveryPlan], None] | None = None,
) -> RecoveryResult:
    """Plan and, unless a dry run, execute. Part failures are in the result, not raised.

    `planned` is called with the plan of a real run before anything is touched (the CLI
    prints it: where each source and database goes), whether or not it has problems.
    A real run holds the target's lock (journal.target_lock) from planning to the report:
    a second recovery into the same target is refused (RecoveryError) before it plans."""
    if options.dry_run:
        plan = build_plan(repo, options)
        return RecoveryResult(plan, errors=list(plan.problems))
    with target_lock(os.path.abspath(options.target)) as unlocked:
        return _recover(repo, options, reporter, unlocked, planned)


def _recover(
    repo: Repository,
    options: RecoverOptions,
    reporter: Reporter,
    unlocked: str | None,
    planned: Callable[[RecoveryPlan], None] | None,
) -> RecoveryResult:
    plan = build_plan(repo, options)
    if planned is not None:
        planned(plan)
    if plan.problems:
        advice = f"; {plan.fallback}" if plan.fallback else ""
        raise RecoveryError("nothing was changed: " + "; ".join(plan.problems) + advice)
    # Before the re-check: a second recovery loading into one of these databases is refused
    # with nothing changed, not failed with the server's error after every file is back.
    with database_locks(d.where for d in plan.databases if not d.done_by) as held:
        notes = ([unlocked] if unlocked else []) + held
        return _carry_out(repo, plan, options, reporter, notes)


def _carry_out(
    repo: Repository,
    plan: RecoveryPlan,
    options: RecoverOptions,
    reporter: Reporter,
    notes: list[str],
) -> RecoveryResult:
    """Re-check, restore, load and report `plan` (whose problems are none); `notes`:
    warnings of the run (locks that could not be taken)."""
    started, _ = now_utc()
    clock = time.monotonic()
    report_to = report_base(options)
    errors: list[str] = []
    warnings = list(plan.warnings) + notes
    files: list[dict[str, Any]] = []
    databases: list[dict[str, Any]] = []
    check = Recheck()
    interrupted, stopped = False, ""
    doing = ""  # what an interruption stops: said in its message; "" before the first byte
    try:
        reporter.info(f"re-checking snapshot {plan.snapshot.short_id} before restoring")
        check = recheck(repo, plan, reporter, globals=options.globals)
        if check.problems:
            fallback = older_verified(repo, plan.snapshot)
            errors.append(
                f"snapshot {plan.snapshot.short_id} failed the re-check; nothing was restored"
                + (f"; {fallback}" if fallback else "")
            )
            errors.extend(check.problems)
        elif (journal := _journal_started(plan, started, errors)) is not None:
            parents = Parents(repo, plan.snapshot, plan.target)
            for item in plan.files:
                if item.done_by:
                    files.append(_files_left(plan, item, reporter))
                    continue
                doing = f"while restoring {item.source} to {item.target}"
                n = len(errors)
                try:
                    parents.make(item.source, item.kind == "dir")
                except OSError:
                    pass  # the restore cannot make it either, and says so for the source
                files.append(_restore_files(repo, plan, item, options, reporter, errors, warnings))
                if len(errors) == n:
                    _note(journal.finished(item.target, started), warnings)
            for db in plan.databases:
                if db.done_by:
                    databases.append(_database_left(plan, db, reporter, errors))
                    continue
                doing = f"while loading database {db.record.name} into {db.where}"
                # Its own just before the load begins (a kill then leaves it to a rerun),
                # not before: one the load refuses, or never reaches, is not its to replace.
                _note(journal.own(db.where), warnings)
                out = _restore_database(repo, plan, db, options, reporter, errors, warnings)
                if out.get("loaded") is False and not db.resumed:
                    _note(journal.disown(db.where), warnings)  # left as it was
                elif out.get("ok"):
                    _note(journal.finished(db.where, started), warnings)
                databases.append(out)
            # Last: what was restored into the folders above the sources changed their times.
            warnings.extend(parents.finish())
    except KeyboardInterrupt:
        interrupted = True
        stopped = (
            f"recovery interrupted {doing}; the target holds a partial recovery: run the same "
            "recover again to finish it"
            if doing
            else "recovery interrupted before anything was restored"
        )
        errors.append(stopped)
    doc = {
        "version": 1, "app": plan.app, "ok": not errors, "target": plan.target,
        "started": started, "duration_s": round(time.monotonic() - clock, 3),
        "host": socket.gethostname(), "program_version": __version__,
        "repository": repo.config.id,
        "snapshot": {"id": plan.snapshot.id, "time": plan.snapshot.time, "host": plan.snapshot.host,
                     "type": plan.snapshot.type, "paths": list(plan.snapshot.paths)},
        "verification": plan.verification.to_dict() if plan.verification else None,
        "application": plan.snapshot.app_definition,
        "recheck": {"files": check.files, "bytes": check.bytes, "duration_s": check.duration_s,
                    "problems": check.problems, "manifest": check.manifest,
                    "manifest_truncated": check.manifest_truncated},
        "files": files, "databases": databases, "warnings": warnings, "errors": errors,
    }  # fmt: skip
    paths = _write_report(doc, report_to, errors)
    result = RecoveryResult(plan, doc, paths, errors)
    if not errors:
        remove_journal(plan.target)  # finished: a rerun is a new recovery
    if interrupted:
        raise Interrupted(stopped + (f"; report: {paths[0]}" if paths else ""))
    return result


def _journal_started(plan: RecoveryPlan, started: str, errors: list[str]) -> JournalWriter | None:
    """Write the journal before the first byte goes to the target (see journal.py): every
    file item, and the databases an interrupted run of this recovery already began; None,
    with the error, when it cannot be written (then nothing is)."""
    done = [(f.target, f.done_by) for f in plan.files if f.done_by]
    done += [(d.where, d.done_by) for d in plan.databases if d.done_by]
    journal = Journal(plan.app, plan.snapshot.identity, started, tuple(f.target for f in plan.files),
                      tuple(d.where for d in plan.databases if d.resumed), tuple(done))  # fmt: skip
    writer = JournalWriter(plan.target, journal)
    try:
        writer.start()
    except OSError as exc:
        errors.append(
            f"nothing was restored: the target {plan.target} cannot be written: "
            f"{exc.strerror or exc}"
        )
        return None
    return writer


def _files_left(plan: RecoveryPlan, item: FileItem, reporter: Reporter) -> dict[str, Any]:
    """The report of a file item an earlier run restored whole: left as it is (its counts
    are the snapshot's)."""
    note = f"restored by the earlier run started {item.done_by[:19]} UTC; left as it is"
    reporter.info(f"{item.target}: {note}")
    return {"source": item.source, "target": item.target, "kind": item.kind, "tree": "",
            "files": item.files, "dirs": 0, "links": 0, "bytes": item.bytes, "errors": [],
            "warnings": [], "left_as_is": note}  # fmt: skip


def _database_left(
    plan: RecoveryPlan, db: DatabaseItem, reporter: Reporter, errors: list[str]
) -> dict[str, Any]:
    """The report of a database an earlier run loaded whole: left as it is (the application
    may have written to it since), its tables counted now; one that cannot be read now is
    an error (--overwrite-databases loads it again)."""
    record = db.record
    note = f"loaded by the earlier run started {db.done_by[:19]} UTC; left as it is"
    reporter.info(f"database {record.name} in {db.where}: {note}")
    out: dict[str, Any] = {
        "name": record.name, "engine": db.spec.engine, "target": db.where,
        "stored_location": db.stored, "dump_path": record.path, "dump_size": record.size,
        "dump_blake3": "", "overwrite": False, "expected_row_counts": dict(record.row_counts),
        "row_counts": {}, "ok": True, "error": "", "loaded": True, "left_as_is": note,
    }  # fmt: skip
    try:
        out["row_counts"] = dict(get_engine(db.spec.engine).row_counts(db.spec))
    except CasError as exc:
        out.update(ok=False, error=f"{note}, but it cannot be read now: {exc} "
                   "(--overwrite-databases loads it again)")  # fmt: skip
        errors.append(f"database {record.name}: {out['error']}")
    return out


def _note(warning: str | None, warnings: list[str]) -> None:
    if warning:
        warnings.append(warning)


def _write_report(doc: dict[str, Any], base: str, errors: list[str]) -> tuple[str, str] | None:
    """Write the report at `base`; where that fails (the target is full or read-only, the
    folder cannot be made), write it to the temp folder instead, naming why in `errors` and
    in the report, so the operator always learns what is back. None when neither worked:
    the result (printed by the caller) is then the only account."""
    try:
        return write_report(doc, base)
    except OSError as exc:
        problem = (
            f"the report could not be written to {report_paths(base)[0]}: {exc.strerror or exc}"
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    app = str(doc["app"]).replace("/", "_")
    short = str(doc["snapshot"]["id"])[:8]
    doc["ok"] = False
    try:
        # A fresh folder of our own (mkdtemp: 0700, a new name), never a planted one.
        folder = tempfile.mkdtemp(prefix=f"casbackup-recovery-{app}-{short}-{stamp}-")
    except OSError as exc:
        errors.append(f"{problem}, nor to the temp folder: {exc.strerror or exc}")
        return None
    fallback = os.path.join(folder, REPORT_NAME)
    errors.append(f"{problem}; it is at {fallback}.json instead")
    try:
        return write_report(doc, fallback)
    except OSError as exc:
        errors[-1] = f"{problem}, nor to {fallback}.json: {exc.strerror or exc}"
        return None


def _restore_files(
    repo: Repository,
    plan: RecoveryPlan,
    item: FileItem,
    options: RecoverOptions,
    reporter: Reporter,
    errors: list[str],
    warnings: list[str],
) -> dict[str, Any]:
    reporter.info(f"restoring {item.source} -> {item.target}")
    clock = time.monotonic()
    node = repo.find_node(plan.snapshot.root, item.source)
    tree = (node.subtree.hex() if node and node.subtree else "") if item.kind == "dir" else ""
    out: dict[str, Any] = {
        "source": item.source, "target": item.target, "kind": item.kind, "tree": tree,
        "files": 0, "dirs": 0, "links": 0, "bytes": 0, "errors": [], "warnings": [],
    }  # fmt: skip
    if item.kind == "file" and node is not None and node.kind == NodeKind.FILE:
        out["blake3"] = node.content_hash.hex()
    try:
        res = restore(
            repo, plan.snapshot,
            RestoreOptions(target=item.restore_into, subpath=item.source, workers=options.workers,
                           overwrite=item.resumed),
            reporter,
        )  # fmt: skip
        out.update(files=res.files, dirs=res.dirs, links=res.links, symlinks=res.symlinks, specials=res.specials, bytes=res.bytes,
                   errors=res.errors, warnings=res.warnings)  # fmt: skip
    except Interrupted:
        # Ctrl-C, SIGTERM: the restore stopped for the user, who wants the whole recovery
        # to stop (it used to go on loading every database, and exit 30 instead of 130).
        raise KeyboardInterrupt from None
    except RestoreStopped as exc:
        # The target took no more data: what was restored before still counts, and each
        # entry that failed before the stop is listed, then the stop itself.
        res = exc.result
        out.update(files=res.files, dirs=res.dirs, links=res.links, symlinks=res.symlinks,
                   specials=res.specials, bytes=res.bytes, errors=[*res.errors, str(exc)],
                   warnings=res.warnings)  # fmt: skip
    except CasError as exc:
        out["errors"] = [str(exc)]
    out["duration_s"] = round(time.monotonic() - clock, 3)
    errors.extend(f"{item.source}: {e}" for e in out["errors"])
    warnings.extend(out["warnings"])
    return out


def _restore_database(
    repo: Repository,
    plan: RecoveryPlan,
    db: DatabaseItem,
    options: RecoverOptions,
    reporter: Reporter,
    errors: list[str],
    warnings: list[str],
) -> dict[str, Any]:
    record = db.record
    reporter.info(f"loading database {record.name} into {db.where}")
    clock = time.monotonic()
    node = repo.find_node(plan.snapshot.root, record.path)
    out: dict[str, Any] = {
        "name": record.name, "engine": db.spec.engine, "target": db.where,
        "stored_location": db.stored,
        "dump_path": record.path, "dump_size": record.size,
        "dump_blake3": node.content_hash.hex() if node else "", "overwrite": db.overwrite,
        "expected_row_counts": dict(record.row_counts), "row_counts": {}, "ok": False, "error": "",
        "loaded": False,
    }  # fmt: skip
    try:
        assert node is not None  # the re-check proved the dump is there
        # Snapshots from before dumps recorded the file's owner and mode: keep the mode of
        # the raw copy restored with the files.
        old_record = db.spec.engine == "sqlite" and not record.properties
        keep_mode = _mode_of(db.spec.path) if old_record else None
        extra = {"properties": record.properties} if record.properties else {}
        # Roles first (PostgreSQL globals): the dump's privileges name them.
        notes, globals_warnings = (
            restore_companions(repo, plan.snapshot, record, db.spec)
            if options.globals
            else ([], [])
        )
        for line in notes:
            reporter.info(line)
        out["globals"] = notes
        warnings.extend(globals_warnings)
        reader = ChunkReader.for_node(repo, node, name=record.path)
        try:
            info = get_engine(db.spec.engine).restore(
                db.spec, reader, overwrite=db.overwrite, **extra
            )  # type: ignore[arg-type]
        finally:
            reader.close()
        # The dump went in (a failed restore leaves the database as it was: all engines).
        out["loaded"] = True
        warnings.extend(info.warnings)
        if keep_mode is not None and db.spec.path:
            # The dump replaces the raw copy restored with the files: keep that copy's mode.
            os.chmod(db.spec.path, keep_mode)
        out["row_counts"] = dict(info.row_counts)
        structural, counts = compare_counts(record.row_counts, info.row_counts)
        if counts and not strict_counts(db.spec.engine, record):
            warnings.extend(
                f"database {record.name}: {c} (counted just before the dump)" for c in counts
            )
            counts = []
        if structural or counts:
            out["error"] = "; ".join(structural + counts)
        else:
            out["ok"] = True
    except CasError as exc:
        out["error"] = str(exc)
    out["duration_s"] = round(time.monotonic() - clock, 3)
    if not out["ok"]:
        errors.append(f"database {record.name}: {out['error']}")
    return out


def _mode_of(path: str | None) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode) if path else None
    except OSError:
        return None
