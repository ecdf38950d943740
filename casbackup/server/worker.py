"""One job, run in its own process: ``python -m casbackup.server.worker`` (started by jobs.py).

Why a process per job: the backup pipeline's cancel mechanism is the one the CLI uses (the first
SIGINT sets its cancel flag and the run stops at a safe point, keeping what it committed), and it
needs the main thread of a process; the repository's LMDB index cache must not be opened twice
in one process; and a job that crashes or is killed cannot take the service down with it.

Protocol: the parent writes one JSON document to stdin::

    {"kind": "backup", "location": "...", "password_b64": "...", "config": "/etc/casbackup.toml",
     "app": "shop", "params": {...}}

and reads JSON lines from stdout: ``{"t": "progress", ...Progress fields}``, ``{"t": "info" |
"warning", "message": ...}``, ``{"t": "notified"}`` (a backup's notifiers heard of its failure), then exactly one ``{"t": "result", "result": {...}}`` or ``{"t":
"error", "message": ..., "exit_code": n}``. The password travels only through the pipe, never on
a command line, in the environment or in the job record. Nothing here imports FastAPI or the CLI.

Stdin stays open: before the service stops a job (a cancel, its stop, the job's maximum run
time) it writes ``{"stop": reason}``, then signals the worker's process group. A failure the
stop causes (a database tool ended by the signal) is then not reported to the application's
notifiers as the backup's own: the service tells them what really happened (jobs.py).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from casbackup import access, plugins
from casbackup.config import Config, load_config
from casbackup.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    CasError,
    CheckFailed,
    NotFound,
    RestoreError,
    UsageError,
)
from casbackup.plan_docs import forget_plan_doc, prune_plan_doc
from casbackup.repo.repository import Repository
from casbackup.reporter import Progress, Reporter
from casbackup.stopsig import stop_handler
from casbackup.text import storable
from casbackup.threadsig import quiet_thread
from casbackup.units import plural

if TYPE_CHECKING:
    from casbackup.archiver.warm import WarmAhead

log = logging.getLogger("casbackup.server.worker")

_out_lock = threading.Lock()
_stop_asked = threading.Event()  # the service sent {"stop": ...}: it is stopping this job
STOP_LINE_WAIT_S = 1.0  # a failure waits this long for a stop line already on its way


def _read_spec() -> tuple[dict[str, Any], tuple[int, bytes] | None]:
    """The job from stdin's first line, and (stdin's fd, what was read after the line) for
    ``_read_stop``; None when stdin is no file (tests). Straight from the fd, never through
    ``sys.stdin``: the stop reader would hold sys.stdin's lock while it waits, and a helper
    process forked meanwhile closes its sys.stdin first thing (multiprocessing), which then
    waited for that lock forever (a backup hung at its start)."""
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return json.loads(sys.stdin.readline()), None
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return json.loads(line), (fd, rest)


def _read_stop(fd: int, data: bytes) -> None:
    """Wait for the service's ``{"stop": reason}`` on stdin (after the spec)."""
    while True:
        while b"\n" in data:
            line, _, data = data.partition(b"\n")
            try:
                if "stop" in json.loads(line):
                    _stop_asked.set()
            except (ValueError, TypeError):
                continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        data += chunk


_outside_stop: list[str] = []  # a SIGTERM came, which the service never sends


def _stopped_from_outside(signum: int, frame: Any) -> None:
    """SIGTERM, which the service never sends (it stops a job with SIGINT): systemd stopping
    the unit signals every process in it at once, this worker and its database tools too,
    maybe before the service has begun to stop. A stop all the same: passed to the SIGINT
    handler in force (the backup's deferred cancel), as the CLI does, and named in the
    result, so that the service records the job as its stop's and tells the notifiers."""
    _outside_stop.append(signal.Signals(signum).name)
    _stop_asked.set()
    handler = stop_handler()
    if callable(handler):  # default_int_handler raises KeyboardInterrupt itself
        handler(signum, frame)
        return
    raise KeyboardInterrupt


def _stopped(message: str) -> dict[str, Any]:
    """The error line of a job that a stop ended."""
    doc: dict[str, Any] = {"t": "error", "message": message, "exit_code": EXIT_INTERRUPTED}
    if _outside_stop:
        doc["stopped_by"] = _outside_stop[0]
    return doc


def stop_asked(wait: float = STOP_LINE_WAIT_S) -> bool:
    """Did the service ask this job to stop? A failure caused by the stop's signal can come
    before the reader thread has read the line, written before the signal: wait a little."""
    return _stop_asked.wait(wait)


def emit(doc: dict[str, Any]) -> None:
    """Send ``doc`` to the service as one JSON line; its text made storable (``storable``)."""
    line = json.dumps(storable(doc), default=str, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class PipeReporter(Reporter):
    """Progress, warnings and notes as JSON lines for the parent (throttled by the library)."""

    def progress(self, progress: Progress) -> None:
        emit({"t": "progress", **dataclasses.asdict(progress)})

    def warning(self, message: str) -> None:
        emit({"t": "warning", "message": message})

    def info(self, message: str) -> None:
        emit({"t": "info", "message": message})


@dataclasses.dataclass
class Job:
    kind: str
    repo: Repository
    config: Config
    app: str | None
    params: dict[str, Any]
    reporter: PipeReporter
    warm: WarmAhead | None = None  # a backup job's sources being warmed (``_warming``)
    timezone: str | None = None  # the service's zone (timezones.py); None: the machine's
    lock_wait_s: float = 0.0  # how long to wait while another process holds the repository
    failures_told_by_service: bool = False  # a failed backup's notice is the service's

    def locked(self, *, exclusive: bool = False, command: str) -> AbstractContextManager[Any]:
        """The repository locked for the job; while another process holds a conflicting
        lock (a prune from cron, a second service's forget), the job waits for it up to
        ``lock_wait_s`` seconds, and its log says so, rather than failing at once."""

        def waiting(why: str) -> None:
            from casbackup.units import format_run_time

            limit = format_run_time(self.lock_wait_s)
            self.reporter.info(f"waiting up to {limit} for the repository: {why}")

        return self.repo.locked(exclusive=exclusive, command=command,
                                wait_s=self.lock_wait_s, on_wait=waiting)  # fmt: skip


def _app(job: Job) -> Any:
    app = job.config.app(job.app or "")
    if app is None:
        raise NotFound(f"no application {job.app!r} in the config")
    return app


def _snapshot(job: Job) -> Any:
    ref = job.params.get("snapshot") or "latest"
    # A job's user may be limited to some applications: no message names the others.
    snap = job.repo.resolve_snapshot(ref, app=job.app, name_apps=False)
    if job.app and snap.app != job.app:
        raise NotFound(f"snapshot {snap.short_id} is not a snapshot of application {job.app!r}")
    return snap


def run_backup_job(job: Job) -> dict[str, Any]:
    from casbackup.archiver.application import backup_application, backup_options

    options = backup_options(
        _app(job),
        backup_type=job.params.get("backup_type"),
        tags=tuple(job.params.get("tags", ())),
        snapshots=job.config.snapshots,  # file-system snapshots apply to scheduled runs too
    )
    if job.warm is not None:  # a first backup stops warming before it walks, as the CLI's
        options = dataclasses.replace(options, on_parent_chosen=job.warm.parent_chosen(0))
    from casbackup.notify import BackupNotice

    # The application's notifiers hear how it went; a failing one is a job warning only.
    notice = BackupNotice(options.app or "", _app(job).notify,
                          offline_mode=job.config.plugins.offline_mode,
                          warn=job.reporter.warning)  # fmt: skip
    notice.started()
    job.reporter.info(f"backing up {options.app} ({options.type})")
    try:
        with job.locked(command="serve: backup"):
            outcome = backup_application(job.repo, options, job.reporter)
    except Exception as exc:
        if stop_asked() or job.failures_told_by_service:
            raise  # the service tells the notifiers why it stopped, or of a failure episode
        notice.failed(exc)
        emit({"t": "notified"})  # the service need not tell them again (jobs.py)
        raise
    snap = outcome.snapshot
    if snap is not None:  # the job's log says what the CLI prints at the end of a backup
        from casbackup.repo.snapshot import saved_lines

        for line in saved_lines(snap):
            job.reporter.info(" ".join(line.split()))  # the log has no columns to align
    result: dict[str, Any] = {
        "snapshot_id": snap.id if snap else None,
        "warnings": outcome.result.warnings,
        "notes": outcome.result.notes,
        "dump_warnings": outcome.dump_warnings,
    }
    if snap is not None:
        result.update(type=snap.type, parent=snap.parent, summary=dataclasses.asdict(snap.summary))
    if outcome.result.warnings:
        result["partial"] = True
    if snap is not None and job.config.auto_verify(snap.app or ""):
        # As `casbackup backup` does: the config's auto_verify proves the new snapshot
        # restorable at once (what recover, by default, asks of a snapshot).
        from casbackup.verify.sandbox import run_verification

        with job.locked(command="serve: verify"):
            verified = run_verification(job.repo, snap, _verify_options(job), job.reporter)
        result["verification"] = verified.record.to_dict()
        if not verified.record.ok:
            emit({"t": "partial_result", "result": result})
            try:
                verified.raise_if_failed()
            except CasError as exc:
                if stop_asked() or job.failures_told_by_service:
                    raise  # the service tells it, once per failure episode (notices.py)
                notice.failed(exc, snap, verification=True)
                emit({"t": "notified"})
                raise
    if not (outcome.result.warnings and job.failures_told_by_service):
        # A partial backup's warning is the service's to tell, once per episode (notices.py).
        notice.finished(outcome.snapshot, outcome.result.warnings)
    return result


def _verify_options(job: Job) -> Any:
    """What `casbackup verify` takes from the config: the sandbox and, for the snapshot's
    application, its databases' servers (never a snapshot's) and its required files."""
    from casbackup.verify.sandbox import VerifyOptions

    return VerifyOptions.from_config(job.config, job.app)


def run_verify_job(job: Job) -> dict[str, Any]:
    from casbackup.verify.sandbox import run_verification

    with job.locked(command="serve: verify"):
        snap = _snapshot(job)
        outcome = run_verification(job.repo, snap, _verify_options(job), job.reporter)
    result = {"snapshot_id": snap.id, **outcome.record.to_dict()}
    outcome.raise_if_failed()
    return result


AFFECTED_KEPT = 200  # per snapshot, the damaged paths a check job's result keeps


def run_check_job(job: Job) -> dict[str, Any]:
    from casbackup.verify.check import CheckOptions, Subset, check

    subset_text = job.params.get("read_data_subset")
    subset = Subset.parse(subset_text) if subset_text else None
    options = CheckOptions(
        read_data=bool(job.params.get("read_data")) or subset is not None, subset=subset
    )
    with job.locked(command="serve: check"):
        report = check(job.repo, options, job.reporter)
    doc = {
        "ok": report.ok, "errors": report.errors, "warnings": report.warnings,
        "damaged_packs": sorted(report.damaged_packs), "repairable_packs": report.repairable_packs,
        # Bounded: the job's result is kept in the state database (the CLI lists them all).
        "affected": {s: paths[:AFFECTED_KEPT] for s, paths in report.affected.items()},
        "affected_counts": {s: len(paths) for s, paths in report.affected.items()},
        "storage_errors": report.storage_errors,
        "snapshots": report.snapshots, "trees": report.trees, "blobs": report.blobs,
        "packs": report.packs, "packs_read": report.packs_read, "bytes_read": report.bytes_read,
    }  # fmt: skip
    if not report.ok:
        emit({"t": "partial_result", "result": doc})
        raise CheckFailed(f"the repository has {len(report.errors)} problems: {report.errors[0]}")
    return doc


def run_restore_job(job: Job) -> dict[str, Any]:
    from casbackup.archiver.restore import RestoreOptions, restore

    target = job.params["target"]
    with job.locked(command="serve: restore"):
        snap = _snapshot(job)
        options = RestoreOptions(target=target, subpath=job.params.get("path") or "/",
                                 overwrite=bool(job.params.get("overwrite")))  # fmt: skip
        try:
            result = restore(job.repo, snap, options, job.reporter)
        except RestoreError as exc:  # what to do, in the API's words, not the CLI's
            if "--overwrite" not in str(exc):
                raise
            raise exc.saying(str(exc).replace("--overwrite", "'overwrite': true")) from None
    doc = {"snapshot_id": snap.id, "target": target, **dataclasses.asdict(result)}
    if result.errors:
        emit({"t": "partial_result", "result": doc})
        raise RestoreError(
            f"{plural(len(result.errors), 'file')} could not be restored: {result.errors[0]}"
        )
    return doc


def run_forget_job(job: Job) -> dict[str, Any]:
    from casbackup.maintenance.forget import execute_forget, plan_forget, policy_from_retention
    from casbackup.timezones import zone
    from casbackup.verify.records import list_records

    app = _app(job)
    policy = policy_from_retention(app.retention)
    if app.retention.is_empty:
        raise UsageError(
            f"application {app.name!r} has no retention in the config: nothing to forget"
        )
    with job.locked(exclusive=True, command="serve: forget"):
        warnings: list[str] = []
        snaps = [s for s in job.repo.list_snapshots(warnings=warnings) if s.app == app.name]
        if warnings:
            raise UsageError(f"{warnings[0]}; forget will not decide without every snapshot")
        verified = {sid for sid, r in list_records(job.repo).latest_by_snapshot().items() if r.ok}
        plan = plan_forget(snaps, lambda _key: policy, datetime.now(UTC), verified=verified,
                           tz=zone(job.timezone))  # fmt: skip
        doc: dict[str, Any] = {
            "dry_run": bool(job.params.get("dry_run")),
            "plan": forget_plan_doc(plan),
        }
        if not doc["dry_run"]:
            result = execute_forget(job.repo, plan)
            doc.update(removed=result.removed, already_gone=result.already_gone)
    return doc


def run_prune_job(job: Job) -> dict[str, Any]:
    from casbackup.maintenance.prune import PruneOptions, execute_prune, plan_prune

    options = PruneOptions(max_unused=float(job.params.get("max_unused", PruneOptions.max_unused)))
    with job.locked(exclusive=True, command="serve: prune"):
        plan = plan_prune(job.repo, options, job.reporter)
        doc: dict[str, Any] = {
            "dry_run": bool(job.params.get("dry_run")),
            "max_unused": options.max_unused,
            "plan": prune_plan_doc(plan, job.repo.config.pack_size),
        }
        if not doc["dry_run"] and not plan.empty:
            result = execute_prune(job.repo, plan, options, job.reporter)
            doc["result"] = {
                **dataclasses.asdict(result),
                "packs_written": len(result.packs_written),
            }
    return doc


def run_recover_job(job: Job) -> dict[str, Any]:
    from casbackup.server.recover_job import run_recover

    return run_recover(job)


def run_unlock_job(job: Job) -> dict[str, Any]:
    from casbackup.maintenance.unlock import remove_stale_locks

    result = remove_stale_locks(job.repo)
    return {"removed": result.removed, "kept": result.kept, "failed": result.failed}


def run_repair_job(job: Job) -> dict[str, Any]:
    """``repair packs`` or ``repair snapshots`` (params: what, packs, dry_run), as the CLI."""
    from casbackup.verify.repair_packs import repair_packs, resolve_packs
    from casbackup.verify.repair_snapshots import repair_snapshots

    dry_run = bool(job.params.get("dry_run"))
    with job.locked(exclusive=True, command="serve: repair"):
        if job.params.get("what") == "packs":
            packs = resolve_packs(job.repo, list(job.params.get("packs") or []))
            result = repair_packs(job.repo, packs, dry_run=dry_run, reporter=job.reporter)
            return {
                "what": "packs", "dry_run": dry_run,
                "packs": [{"pack": p.pack, "missing": p.missing, "salvaged": p.salvaged,
                           "dropped": len(p.dropped)} for p in result.packs],
                "packs_written": len(result.packs_written), "packs_deleted": result.packs_deleted,
            }  # fmt: skip
        done = repair_snapshots(job.repo, dry_run=dry_run, reporter=job.reporter)
        return {
            "what": "snapshots", "dry_run": dry_run, "checked": done.checked,
            "repaired": [{"snapshot": r.old, "new": r.new, "app": r.app, "time": r.time,
                          "removed": r.removed[:AFFECTED_KEPT], "removed_count": len(r.removed)}
                         for r in done.repaired],
        }  # fmt: skip


def run_tag_job(job: Job) -> dict[str, Any]:
    """``tag`` of one snapshot (params: snapshot, add, remove, set), as the CLI."""
    from casbackup.maintenance.tags import TagChange, change_tags

    p = job.params
    change = TagChange(
        add=tuple(p.get("add") or ()), remove=tuple(p.get("remove") or ()),
        set_to=None if p.get("set") is None else tuple(p["set"]),
    )  # fmt: skip
    with job.locked(exclusive=True, command="serve: tag"):
        result = change_tags(job.repo, [str(p.get("snapshot"))], change, app=job.app)
    for old_id in result.leftovers_removed:
        job.reporter.info(f"removed left-over record {old_id[:8]} of an interrupted tag change")
    if result.changed:
        old, new = result.changed[0]
        job.reporter.info(
            f"snapshot {old.short_id} is now {new.short_id}: tags {', '.join(new.tags) or '(none)'}"
        )
        return {"snapshot_id": new.id, "old_id": old.id, "tags": list(new.tags), "changed": True}
    snap = result.unchanged[0]
    job.reporter.info(f"snapshot {snap.short_id}: tags unchanged")
    return {"snapshot_id": snap.id, "old_id": snap.id, "tags": list(snap.tags), "changed": False}


def run_rewrite_job(job: Job) -> dict[str, Any]:
    """``rewrite`` of the job's application (params: excludes, forget, dry_run), as the CLI."""
    from casbackup.archiver.excludes import Excluder
    from casbackup.maintenance.rewrite import rewrite_snapshots

    p = job.params
    dry_run = bool(p.get("dry_run", True))
    excluder = Excluder([str(x) for x in p.get("excludes") or []])
    with job.locked(exclusive=True, command="serve: rewrite"):
        snaps = [s for s in job.repo.list_snapshots(warnings=[]) if s.app == job.app]
        done = rewrite_snapshots(job.repo, snaps, excluder, forget_old=bool(p.get("forget")),
                                 dry_run=dry_run, reporter=job.reporter)  # fmt: skip
    return {
        "dry_run": dry_run, "forget": bool(p.get("forget")), "excludes": list(excluder.patterns),
        "checked": done.checked, "emptied": done.emptied,
        "rewritten": [{"snapshot": r.old, "new": r.new, "time": r.time, "files": r.files,
                       "bytes": r.bytes, "removed": r.removed[:AFFECTED_KEPT],
                       "removed_count": len(r.removed), "forgotten": r.forgotten}
                      for r in done.rewritten],
    }  # fmt: skip


WRITING_KINDS = frozenset(
    {"backup", "verify", "forget", "prune", "repair", "tag", "rewrite"}
)  # they store new objects

OPERATIONS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "backup": run_backup_job,
    "verify": run_verify_job,
    "check": run_check_job,
    "restore": run_restore_job,
    "forget": run_forget_job,
    "prune": run_prune_job,
    "recover": run_recover_job,
    "unlock": run_unlock_job,
    "repair": run_repair_job,
    "tag": run_tag_job,
    "rewrite": run_rewrite_job,
}


def die_with_parent() -> None:
    """Ask Linux to kill this process when the service's job thread ends (kill -9 of the service
    included): a worker must not go on writing after the service that records it is gone.
    Done here rather than in a preexec_fn, which is unsafe in the service's threaded process."""
    from casbackup import libc

    expected = os.environ.get("CASBACKUP_SERVICE_PID")
    prctl = libc.function("prctl")
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if expected and os.getppid() != int(expected):  # the service died before prctl took effect
        os._exit(EXIT_FATAL)


def _warming(kind: str, config: Config, app_name: str | None) -> AbstractContextManager[Any]:
    """For a backup job, its application's sources warmed while the key is derived and
    the repository opened, and on during the backup (archiver/warm.py), as `casbackup
    backup --app NAME` warms them: the scheduled nightly backups come this way. Not an
    application read from file-system snapshots. Warming only saves time: whatever goes
    wrong here is left for the job itself to meet and report."""
    if kind != "backup":
        return contextlib.nullcontext()
    try:
        from casbackup.archiver.application import source_options
        from casbackup.archiver.warm import warming_ahead

        app = config.app(app_name or "")
        if app is None:
            return contextlib.nullcontext()
        # The same description of what the backup reads as run_backup_job's backup_options.
        return warming_ahead([source_options(app, snapshots=config.snapshots)])
    except Exception:
        log.debug("the job's sources are not warmed", exc_info=True)
        return contextlib.nullcontext()


def main() -> int:
    die_with_parent()
    # The service asks for a stop with SIGINT (the library's cancel mechanism), so SIGINT is
    # ours to handle even when the service was started with it ignored (``serve &`` in a
    # script: an ignored signal survives exec); SIGTERM comes from outside it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stopped_from_outside)
    try:
        spec, stdin = _read_spec()
        if stdin is not None:
            # Stop signals blocked here: the service's SIGINT must reach the main thread.
            quiet_thread(_read_stop, args=stdin, name="stop-reader").start()
        kind = spec["kind"]
        operation = OPERATIONS[kind]
        password = base64.b64decode(spec["password_b64"])
        config = load_config(spec["config"]) if spec.get("config") else Config()
        plugins.configure(enabled=config.plugins.enabled, offline_mode=config.plugins.offline_mode)
        with _warming(kind, config, spec.get("app")) as ahead:
            repo = access.open_repository(spec["location"], password, spec.get("s3") or None)
            try:
                if kind in WRITING_KINDS:
                    repo.require_writable()  # an old format this program may only read
                job = Job(kind, repo, config, spec.get("app"), spec.get("params") or {},
                          PipeReporter(), ahead, spec.get("timezone"),
                          float(spec.get("lock_wait_s") or 0),
                          bool(spec.get("failures_told_by_service")))  # fmt: skip
                result = operation(job)
            finally:
                repo.close()
    except KeyboardInterrupt:
        emit(_stopped("cancelled"))
        return EXIT_INTERRUPTED
    except CasError as exc:
        if stop_asked():
            # What the stop's signal did (a dump tool ended by it): a cancel, as for the CLI.
            emit(_stopped(f"cancelled ({exc})"))
            return EXIT_INTERRUPTED
        emit({"t": "error", "message": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    except (OSError, MemoryError, ValueError, KeyError) as exc:
        emit({"t": "error", "message": f"{type(exc).__name__}: {exc}", "exit_code": EXIT_FATAL})
        return EXIT_FATAL
    except Exception as exc:
        # A fault of ours (or a plugin's) outside the library's error handling: the stack
        # has unwound (the repository's lock released), the job gets one line, and the
        # traceback goes to stderr for whoever debugs it; the exit stays os._exit's below.
        traceback.print_exc()
        message = f"unexpected error in the job's process: {type(exc).__name__}: {exc}"
        emit({"t": "error", "message": message, "exit_code": EXIT_FATAL})
        return EXIT_FATAL
    emit({"t": "result", "result": result})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown races with helper processes
