"""Verify a snapshot by restoring it into a sandbox and proving what came back.

Steps: restore the whole snapshot into a private folder; compare the folder with the snapshot
(names, types, sizes, symlink targets, every file's BLAKE3 re-read from disk); check the
application's required key files; load every database dump (see `dumps.py`). The outcome is
stored in the repository as a verification record (`records.py`) whether it passed or not;
`VerifyResult.raise_if_failed()` turns a failed one into `VerificationFailed`. What this
machine lacks is no finding about the snapshot and is never recorded (a failed record would
override an earlier pass, and recover would pass over a sound snapshot): a server for scratch
databases that is not named or cannot be used stops the verification before it starts
(DatabaseError), a sandbox that runs out of room stops it as a storage error.

A snapshot never steers a verification: every path it stores (dump paths, required files) is
resolved inside the restored tree, never through a symlink, and refused (named) otherwise;
dumps load only into servers the caller names (`--db-server`, the local config), never into
one the snapshot's stored definition names.

The sandbox is always a fresh `mkdtemp` folder (inside `sandbox_dir` when given, never
`sandbox_dir` itself, so a user's folder is never emptied) and is removed in a `finally`:
after success, failure and Ctrl-C alike, unless the caller asked to keep it. Its name carries
the process's pid and token, so the next verification removes the sandbox of one that was
killed outright (``sweep_stale_sandboxes``). An interrupted
verification stores no record: it proved nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from casbackup import __version__
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.restore_files import RestoreStopped
from casbackup.engines.base import DatabaseSpec, canonical_engine_name
from casbackup.engines.leftovers import process_tag, sweep_stale_folders
from casbackup.errors import (
    CasError,
    DatabaseError,
    Interrupted,
    StorageError,
    VerificationFailed,
)
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, Snapshot, now_utc
from casbackup.repo.tree import NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.units import human_bytes, plural
from casbackup.verify.compare import Comparison, compare_tree
from casbackup.verify.dumps import (
    check_dump,
    definition_specs,
    record_problem,
    resolve_in_tree,
    server_problem,
    stored_location,
)
from casbackup.verify.records import DatabaseCheck, Failure, VerificationRecord, save_record

if TYPE_CHECKING:
    from casbackup.config.model import Config

MESSAGE_LIMIT = 20  # failures named in the one-line error; the record has all of them


@dataclass(frozen=True)
class VerifyOptions:
    sandbox_dir: str | None = None  # parent of the private sandbox; None: the system temp dir
    keep_sandbox: bool = False
    required_files: tuple[str, ...] = ()  # added to the definition's required_files
    # engine -> server to create scratch databases on (the command line's --db-server)
    db_servers: Mapping[str, DatabaseSpec] = field(default_factory=dict)
    # name -> the local config's definition of the application's database: its server is the
    # default for scratch databases. Never the snapshot's stored definition (see dumps.py).
    databases: Mapping[str, DatabaseSpec] = field(default_factory=dict)
    workers: int = 2
    save: bool = True  # store the record in the repository

    @classmethod
    def from_config(cls, config: Config | None, app: str | None, **overrides: Any) -> VerifyOptions:
        """What the local config says about verifying a snapshot of application ``app``: its
        sandbox folder, the application's databases by name (their servers take the scratch
        databases: never a snapshot's) and its required files, checked on top of those the
        snapshot recorded at backup time (a file added to the config is required of every
        snapshot verified from then on). ``overrides`` (e.g. ``sandbox_dir`` from the command
        line, when not None) win. One rule for ``verify``, ``backup --auto-verify`` and the
        service's verify jobs."""
        app_config = config.app(app) if config is not None and app else None
        options = cls(
            sandbox_dir=config.verification.sandbox_directory if config is not None else None,
            databases={d.name: d for d in app_config.databases} if app_config else {},
            required_files=(tuple(app_config.verification.required_files) if app_config else ()),
        )
        return replace(options, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class VerifyResult:
    snapshot: Snapshot
    record: VerificationRecord
    sandbox: str | None  # the kept sandbox, or None when it was removed

    @property
    def ok(self) -> bool:
        return self.record.ok

    def raise_if_failed(self) -> None:
        if self.record.ok:
            return
        failures = self.record.failures
        named = "; ".join(f"{f.path}: {f.problem}" for f in failures[:MESSAGE_LIMIT])
        more = (
            f"; and {len(failures) - MESSAGE_LIMIT} more" if len(failures) > MESSAGE_LIMIT else ""
        )
        raise VerificationFailed(
            f"snapshot {self.snapshot.short_id} failed verification with "
            f"{plural(len(failures), 'problem')}: {named}{more}"
        )


def required_files(snapshot: Snapshot, extra: tuple[str, ...] = ()) -> list[str]:
    """The files a verification must find: the stored definition's list, then `extra`.

    Stored values are data from the repository: anything but a list of strings is ignored,
    and each path is later resolved inside the restored tree (`resolve_in_tree`)."""
    definition = snapshot.app_definition if isinstance(snapshot.app_definition, dict) else {}
    section = definition.get("verification")
    listed = section.get("required_files") if isinstance(section, dict) else None
    stored = [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
    return list(dict.fromkeys([*stored, *extra]))


def _required_candidates(snapshot: Snapshot, wanted: str) -> list[str]:
    """Where a required file may be, as absolute paths in the snapshot.

    ``/srv/app/manage.py`` is that path. A relative name is accepted both ways users write
    it: relative to any source folder (``manage.py`` for source ``/srv/app``) and from the
    snapshot's root (``srv/app/manage.py``); the file must exist at one of them. Each is
    resolved inside the restored tree by ``_required_present`` (the definition is untrusted).
    """
    if wanted.startswith("/"):
        return [wanted]
    sources = [src for src in snapshot.paths if isinstance(src, str)]
    return [src.rstrip("/") + "/" + wanted for src in sources] + ["/" + wanted]


def _required_present(files: str, candidates: list[str]) -> bool:
    """Whether any candidate exists in the restored tree. Each is resolved inside the tree
    without following symlinks (FormatError, naming it, for one that would leave it)."""
    for candidate in candidates:
        if os.path.lexists(resolve_in_tree(files, candidate)):
            return True
    return False


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


SANDBOX_PREFIX = "casbackup-verify-"
# casbackup-verify-<pid>-<token>-<mkdtemp's random part>: see engines/leftovers.py
_SANDBOX_NAME = re.compile(r"casbackup-verify-(\d+)-([0-9a-f]{8})-[A-Za-z0-9_]+")


def sweep_stale_sandboxes(parent: str) -> list[str]:
    """Remove the sandboxes in ``parent`` of verifications killed outright (SIGKILL, power
    cut: their ``finally`` never ran), each a whole restored snapshot; returns their paths.

    Only folders named by this version's pattern, owned by this user (lstat: a symlink is
    never one) and whose process is gone or is an earlier process with this pid
    (``leftovers.is_stale``); a live verification's sandbox and anything else are left."""
    return sweep_stale_folders(parent, _SANDBOX_NAME, remove_tree)


def remove_tree(path: str) -> None:
    """Remove a restored tree, however deep, even where restored folder modes forbid writing.

    Works through folder handles (`dir_fd`), one level open at a time, so neither PATH_MAX
    nor the recursion limit nor the open-file limit bounds the depth it can remove (Python
    3.11's `os.walk` and `shutil.rmtree` recurse per level). Folders are opened up before
    they are entered; symlinks are never followed (they are unlinked like files), so nothing
    outside the tree is touched.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IRWXU)
    fd = os.open(path, _DIR_FLAGS)
    # One entry per open level: (its name in the parent, its subfolders still to remove).
    levels: list[tuple[str, list[str]]] = [("", _clear_files(fd))]
    try:
        while True:
            name, pending = levels[-1]
            if pending:
                sub = pending.pop()
                with contextlib.suppress(OSError):
                    os.chmod(sub, stat.S_IRWXU, dir_fd=fd)
                child = os.open(sub, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                levels.append((sub, _clear_files(fd)))
                continue
            levels.pop()
            if not levels:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-folder in the open folder; return the names of its subfolders."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return folders


def run_verification(
    repo: Repository,
    snapshot: Snapshot,
    options: VerifyOptions = VerifyOptions(),
    reporter: Reporter = NULL_REPORTER,
) -> VerifyResult:
    """Verify; store and return the record. Findings never raise here (see raise_if_failed);
    what keeps this machine from verifying does, and stores nothing: DatabaseError (no
    usable scratch server for a dump, before or after a load that failed), StorageError (the store or the sandbox failed),
    Interrupted."""
    started, _ = now_utc()
    clock = time.monotonic()
    unusable = _unusable_servers(snapshot, options)
    if unusable:
        # This machine cannot load a dump, whatever the dump holds: recorded as a failure
        # it would override an earlier pass and make recover skip a sound snapshot.
        raise DatabaseError(
            f"snapshot {snapshot.short_id} could not be verified, nothing was recorded: "
            + "; ".join(unusable)
        )
    parent = options.sandbox_dir or tempfile.gettempdir()
    try:
        if options.sandbox_dir:
            os.makedirs(options.sandbox_dir, exist_ok=True)
        for gone in sweep_stale_sandboxes(parent):
            reporter.warning(f"removed the sandbox of a verification that was killed: {gone}")
        sandbox = tempfile.mkdtemp(prefix=f"{SANDBOX_PREFIX}{process_tag()}-", dir=parent)
    except OSError as exc:
        raise StorageError(
            f"snapshot {snapshot.short_id} could not be verified, nothing was recorded: the "
            f"sandbox cannot be made in {parent}: {exc.strerror or exc} (give --sandbox a "
            "folder this user can write)"
        ) from None
    try:
        found = _verify_in(repo, snapshot, options, reporter, sandbox)
    except KeyboardInterrupt:
        raise Interrupted(
            f"verification of snapshot {snapshot.short_id} interrupted; nothing was recorded"
        ) from None
    finally:
        if not options.keep_sandbox:
            remove_tree(sandbox)
    comparison, databases, warnings = found
    failures = [Failure(p, why) for p, why in comparison.problems.items()]
    failures += [Failure(f"database {d.name}", d.problem) for d in databases if not d.ok]
    record = VerificationRecord(
        snapshot_id=snapshot.identity, app=snapshot.app, time=started, host=socket.gethostname(),
        duration_s=round(time.monotonic() - clock, 3), ok=not failures,
        files_checked=comparison.files_checked, bytes_checked=comparison.bytes_checked,
        databases=tuple(databases), failures=tuple(failures),
        warnings=tuple(comparison.warnings + warnings), program_version=__version__,
    )  # fmt: skip
    if failures:
        # A lock taken for stale meanwhile (paused past the limit): a prune may have
        # moved what failed to restore. Not recorded as a failure of the backup.
        repo.confirm_locks(renew=False)
    if options.save:
        record = save_record(repo, record)
    return VerifyResult(snapshot, record, sandbox if options.keep_sandbox else None)


def verify_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    options: VerifyOptions = VerifyOptions(),
    reporter: Reporter = NULL_REPORTER,
) -> VerifyResult:
    """Verify and store the record; raise VerificationFailed (after storing) on any problem."""
    result = run_verification(repo, snapshot, options, reporter)
    result.raise_if_failed()
    return result


def _verify_in(
    repo: Repository,
    snapshot: Snapshot,
    options: VerifyOptions,
    reporter: Reporter,
    sandbox: str,
) -> tuple[Comparison, list[DatabaseCheck], list[str]]:
    files = os.path.join(sandbox, "files")
    can_make_devices = os.geteuid() == 0
    reporter.info(f"restoring snapshot {snapshot.short_id} into {sandbox}")
    restored_errors: list[str] = []
    try:
        result = restore(
            repo, snapshot,
            RestoreOptions(target=files, workers=options.workers, owners=can_make_devices),
            reporter,
        )  # fmt: skip
        restored_errors = result.errors
    except Interrupted:
        raise KeyboardInterrupt from None
    except StorageError:
        raise  # the store failed (permissions, I/O): nothing was verified, nothing failed
    except RestoreStopped as exc:
        # The sandbox took no more data (full, over quota): this machine's limit, not the
        # snapshot's fault. Recorded as a failure it would override an earlier pass and
        # make recover skip a sound snapshot, so nothing is recorded.
        raise StorageError(
            f"snapshot {snapshot.short_id} could not be verified, nothing was recorded: "
            f"{exc} (the snapshot holds {human_bytes(snapshot.summary.bytes_total)}: give "
            "--sandbox a folder with room for it)"
        ) from None
    except CasError as exc:
        # A restore that stops (an unreadable root tree) leaves whatever it wrote; the
        # comparison below names everything that is missing because of it.
        restored_errors = [f"/: restore stopped: {exc}"]
    reporter.info("comparing the restored files with the snapshot")
    dump_files, dump_bytes = _dump_files(repo, snapshot)
    progress = Progress(phase="verify", files_total=snapshot.summary.files_total + dump_files,
                        bytes_total=snapshot.summary.bytes_total + dump_bytes)  # fmt: skip

    def on_file(size: int) -> None:
        progress.files_done += 1
        progress.bytes_done += size
        if progress.files_done % 64 == 0:
            reporter.progress(progress)

    # The restore's messages are the precise ones (which blob, which pack): they come first.
    known: dict[str, str] = {}
    for message in restored_errors:
        rel, _, why = message.partition(": ")
        known.setdefault("/" + rel.lstrip("/"), why)
    comparison = compare_tree(
        repo, snapshot.root, files, can_make_devices=can_make_devices, on_file=on_file,
        known=known,
    )  # fmt: skip
    reporter.progress(progress)
    for wanted in required_files(snapshot, options.required_files):
        try:
            present = _required_present(files, _required_candidates(snapshot, wanted))
        except CasError as exc:
            comparison.fail(wanted, f"required file: {exc}")
            continue
        if not present:
            comparison.fail(wanted, "required file is missing from the snapshot")
    databases, warnings = _check_databases(snapshot, options, files, comparison, reporter)
    return comparison, databases, warnings


def _dump_files(repo: Repository, snapshot: Snapshot) -> tuple[int, int]:
    """(files, bytes) of the dumps in ``/.databases``, which the comparison checks as files
    but the snapshot's summary leaves out: without them the progress said "233/231 files".
    (0, 0) when there is no such folder or it cannot be read (the comparison says why)."""
    try:
        node = repo.find_node(snapshot.root, "/.databases")
        if node is None or node.subtree is None:
            return 0, 0
        dumps = [n for n in repo.load_tree(node.subtree) if n.kind == NodeKind.FILE]
    except CasError:
        return 0, 0
    return len(dumps), sum(n.size for n in dumps)


def _server_for(record: DatabaseRecord, options: VerifyOptions) -> DatabaseSpec | None:
    """Where the scratch database for `record`'s dump goes: the command line's server for
    its engine, else the local config's definition of the database (of the same engine)."""
    engine = canonical_engine_name(record.engine)
    server = options.db_servers.get(engine) or options.databases.get(record.name)
    if server is not None and server.engine and canonical_engine_name(server.engine) != engine:
        return None
    return server


def _unusable_servers(snapshot: Snapshot, options: VerifyOptions) -> list[str]:
    """'database NAME: why' for each dump of `snapshot` that no usable server here could
    load (see dumps.server_problem); malformed records are left to the check itself."""
    stored = definition_specs(snapshot.app_definition)
    out = []
    for record in snapshot.databases:
        if record_problem(record) is not None:
            continue
        where = stored_location(stored.get(record.name))
        problem = server_problem(record, _server_for(record, options), where)
        if problem is not None:
            out.append(f"database {record.name!r}: {problem}")
    return out


def _check_databases(
    snapshot: Snapshot,
    options: VerifyOptions,
    files: str,
    comparison: Comparison,
    reporter: Reporter,
) -> tuple[list[DatabaseCheck], list[str]]:
    stored = definition_specs(snapshot.app_definition)  # shown in messages, never followed
    checks: list[DatabaseCheck] = []
    warnings: list[str] = []
    for record in snapshot.databases:
        malformed = record_problem(record)
        if malformed is not None:
            checks.append(DatabaseCheck(str(record.name), "?", False, problem=malformed))
            continue
        engine = canonical_engine_name(record.engine)
        if record.path in comparison.problems:
            checks.append(DatabaseCheck(
                record.name, engine, False, len(record.row_counts), sum(record.row_counts.values()),
                problem=f"dump file {record.path} is damaged: {comparison.problems[record.path]}",
            ))  # fmt: skip
            continue
        reporter.info(f"loading database dump {record.name} ({engine})")
        server = _server_for(record, options)
        where = stored_location(stored.get(record.name))
        outcome = check_dump(record, files, server, where)
        if not outcome.check.ok and engine != "sqlite":
            # Was it the dump, or did the server go away during the load (restarted, its
            # network cut)? Only the first says anything about the snapshot: recorded, the
            # second would override an earlier pass and make recover skip a sound snapshot.
            gone = server_problem(record, server, where)
            if gone is not None:
                raise DatabaseError(
                    f"snapshot {snapshot.short_id} could not be verified, nothing was recorded: "
                    f"database {record.name!r}: the load failed ({outcome.check.problem}) and "
                    f"now {gone}"
                )
        checks.append(outcome.check)
        warnings.extend(outcome.warnings)
    return checks, warnings
