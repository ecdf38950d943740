from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import click

from casbackup.archiver.backup import BackupOptions, BackupResult, run_backup
from casbackup.archiver.excludes import CACHEDIR_TAG, parse_if_present, read_exclude_file
from casbackup.archiver.warm import WarmAhead, warming_ahead
from casbackup.cli.context import PREPARED, global_options, with_repository
from casbackup.cli.render import emit_json, plural, printable, reporter_for, warn
from casbackup.errors import EXIT_FATAL, CasError, PartialBackup, UsageError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import check_tags, saved_lines, split_tag_args

if TYPE_CHECKING:
    from casbackup.archiver.application import AppBackupResult

# The configuration and the application machinery (database engines, file-system
# snapshots) are imported where --app or --all needs them: a backup of PATHS, the
# common and the short case, starts about 20-35 ms sooner without them.


def _app_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The same rule as a config's application names: a name that the config would refuse
    ('', '..', 'a/b', a newline) would otherwise be stored in the snapshot for good."""
    if value is None:
        return value
    from casbackup.config.load import APP_NAME_RE

    if not APP_NAME_RE.match(value) or value != value.strip():
        raise UsageError(
            f"--app '{printable(value)}' is not a valid application name: start with a letter, "
            "digit or '_', at most 100 characters, no '/', ',', ':' or control characters"
        )
    return value


def _warm_sources(params: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """Warm the metadata of what the backup will read while the repository is opened
    (archiver/warm.py): the PATHS given; without PATHS, the sources of the application of
    --app (the nightly case), or with --all the first application's, and each next one's
    while the one before it is backed up (``_backup_all`` tells the ``WarmAhead``). Not an
    application read from file-system snapshots (the live folders are not what it reads).
    Warming only saves time: whatever goes wrong here is left for the command to say."""
    try:
        backups = _backups_to_warm(params)
    except Exception:
        return contextlib.nullcontext()
    return warming_ahead(backups) if backups else contextlib.nullcontext()


def _backups_to_warm(params: dict[str, Any]) -> list[BackupOptions | None]:
    """What each backup the command runs reads, in the order it runs them (see
    archiver/application.py ``source_options``). Raises CasError (a config or exclude file
    that cannot be read)."""
    patterns = list(params.get("excludes") or ())
    for f in params.get("exclude_files") or ():
        patterns.extend(read_exclude_file(f))
    one_fs = bool(params.get("one_file_system"))
    if params.get("paths"):
        return [BackupOptions(paths=tuple(params["paths"]), excludes=tuple(patterns),
                              one_file_system=one_fs)]  # fmt: skip
    if not params.get("app") and not params.get("all_apps"):
        return []
    from casbackup.archiver.application import source_options
    from casbackup.cli.config_support import load_cli_config

    config = load_cli_config(global_options(click.get_current_context()))
    if config is None:
        return []
    apps = config.applications if params.get("all_apps") else [config.app(params["app"])]
    return [source_options(app, extra_excludes=tuple(patterns), one_file_system=one_fs,
                           snapshots=config.snapshots) if app is not None else None
            for app in apps]  # fmt: skip


@click.command()
# readable=False: a source this user cannot read is the backup's to warn about (a partial
# backup of the rest, exit 3), not a usage error that stores nothing.
@click.argument("paths", nargs=-1, type=click.Path(readable=False))
@click.option(
    "--app",
    callback=_app_name,
    help="Application name; without PATHS, back up the app from the config.",
)
@click.option("--all", "all_apps", is_flag=True, help="Back up every application in the config.")
@click.option(
    "--type",
    "backup_type",
    type=click.Choice(["full", "incremental", "differential"]),
    default=None,
    help="Backup type [default: the app's default_backup_type, else incremental].",
)
@click.option(
    "--tag", "tags", multiple=True, help="Tag the snapshot (repeatable; a,b is two tags)."
)
@click.option(
    "-e",
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Exclude paths matching PATTERN (repeatable).",
)
@click.option(
    "--exclude-file",
    "exclude_files",
    multiple=True,
    type=click.Path(),
    help="Read exclude patterns from a file.",
)
@click.option(
    "--exclude-caches",
    is_flag=True,
    help="Leave out folders tagged with a CACHEDIR.TAG (https://bford.info/cachedir/).",
)
@click.option(
    "--exclude-if-present",
    "if_present",
    multiple=True,
    metavar="NAME[:HEADER]",
    help="Leave out folders holding a file NAME (that starts with HEADER); repeatable.",
)
@click.option(
    "--exclude-larger-than",
    "larger_than",
    metavar="SIZE",
    callback=lambda ctx, param, value: _exclude_size(value),
    help="Leave out files bigger than SIZE (e.g. 2G) [default: the app's "
    "exclude_larger_than, else no limit].",
)
@click.option(
    "-x",
    "--one-file-system",
    is_flag=True,
    help="Do not cross file system boundaries (mount points are kept as empty folders).",
)
@click.option(
    "--no-xattrs",
    is_flag=True,
    help="Do not record extended attributes, POSIX ACLs and file capabilities.",
)
@click.option(
    "--delta-files",
    metavar="SIZE",
    callback=lambda ctx, param, value: _delta_files(value),
    help="Store a changed file of at least SIZE (e.g. 64M) as deltas of its version in the "
    "parent snapshot, so a database file or disk image changed here and there costs what "
    "changed; 0: off [default: the app's delta_files, else off].",
)
@click.option(
    "--stdin", "from_stdin", is_flag=True,
    help="Back up standard input as one file, /NAME (--stdin-filename).",
)  # fmt: skip
@click.option(
    "--stdin-from-command", "from_command", is_flag=True,
    help="Back up what the command given after -- writes; no snapshot unless it exits 0.",
)  # fmt: skip
@click.option(
    "--stdin-filename", metavar="NAME", default="stdin", show_default=True,
    help="The file's name in the snapshot, with --stdin or --stdin-from-command.",
)  # fmt: skip
@click.option("-n", "--dry-run", is_flag=True, help="Read and chunk everything, store nothing.")
@click.option(
    "--parent",
    help="Use this snapshot as the parent instead of the latest one (a --type full "
    "still reads every file).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Reader processes (read, chunk, compress, encrypt files).",
)
@click.option(
    "--auto-verify/--no-auto-verify",
    default=None,
    help="Verify the new snapshot in a sandbox right away [default: the config's auto_verify].",
)
@click.pass_context
@with_repository(lock="shared", writes=True, prepare=_warm_sources)
def backup(repo: Repository, ctx: click.Context, paths: tuple[str, ...], app: str | None, all_apps: bool,
           backup_type: str | None, tags: tuple[str, ...], excludes: tuple[str, ...],
           exclude_files: tuple[str, ...], exclude_caches: bool, if_present: tuple[str, ...],
           larger_than: int | None, one_file_system: bool, no_xattrs: bool,
           delta_files: int | None, from_stdin: bool, from_command: bool, stdin_filename: str,
           dry_run: bool, parent: str | None, workers: int,
           auto_verify: bool | None) -> None:  # fmt: skip
    """Back up PATHS, an application from the config (--app NAME), or all of them (--all);
    or a stream (--stdin, or --stdin-from-command -- COMMAND ARGS...)."""
    tags = check_tags(split_tag_args(tags), "--tag")  # before any work: a bad tag fails fast
    if from_stdin or from_command:
        _backup_stream(ctx, repo, paths, app, all_apps, parent, from_stdin, from_command,
                       stdin_filename, backup_type, tags, dry_run, auto_verify)  # fmt: skip
        return
    patterns = list(excludes)
    for f in exclude_files:
        patterns.extend(read_exclude_file(f))
    parse_if_present(if_present)  # UsageError before any work
    common: dict[str, Any] = dict(
        exclude_if_present=(*((CACHEDIR_TAG,) if exclude_caches else ()), *if_present),
        exclude_larger_than=larger_than,
        one_file_system=one_file_system,
        dry_run=dry_run,
        workers=workers,
        xattrs=not no_xattrs,
        delta_files=delta_files,
    )
    if all_apps:
        if paths or app or parent:
            raise UsageError(
                "--all backs up the applications of the config: give no PATHS, --app or --parent"
            )
        _backup_all(repo, ctx, backup_type, tags, tuple(patterns), common, auto_verify)
        return
    if app and not paths:
        from casbackup.archiver.application import backup_options
        from casbackup.cli.config_support import load_cli_config, require_app

        config = load_cli_config(
            global_options(ctx), required=True, why=f"--app {app} without PATHS"
        )
        assert config is not None
        options = backup_options(require_app(config, app), backup_type=backup_type, tags=tags,
                                 extra_excludes=tuple(patterns), parent=parent,
                                 snapshots=config.snapshots, **common)  # fmt: skip
        options = replace(options, on_parent_chosen=_stop_warming_for_first(ctx))
        outcome = _notified_run(repo, ctx, config, app, options, auto_verify)
        _raise_partial(outcome.result)
        return
    if not paths:
        raise UsageError("nothing to back up: give one or more paths, --app NAME or --all")
    common["delta_files"] = delta_files or 0
    common["exclude_larger_than"] = larger_than or 0
    options = BackupOptions(
        paths=paths, type=backup_type or "incremental", app=app, tags=tags, excludes=tuple(patterns),
        parent=parent, on_parent_chosen=_stop_warming_for_first(ctx), **common,
    )  # fmt: skip
    reporter = reporter_for(ctx)
    try:
        result = run_backup(repo, options, reporter)
    finally:
        reporter.done()
    render_backup_result(ctx, result, dry_run)
    _auto_verify(repo, ctx, result, bool(auto_verify))
    _raise_partial(result)


def _backup_stream(ctx: click.Context, repo: Repository, paths: tuple[str, ...], app: str | None,
                   all_apps: bool, parent: str | None, from_stdin: bool, from_command: bool,
                   name: str, backup_type: str | None, tags: tuple[str, ...], dry_run: bool,
                   auto_verify: bool | None) -> None:  # fmt: skip
    """--stdin / --stdin-from-command (archiver/stdin.py)."""
    import sys

    from casbackup.archiver.stdin import StreamBackup, backup_stream

    if from_stdin and from_command:
        raise UsageError("give --stdin or --stdin-from-command, not both")
    if app or all_apps or parent:
        raise UsageError("a stream is backed up on its own: no --app, --all or --parent with it")
    if from_stdin and paths:
        raise UsageError("--stdin reads standard input: give no PATHS (--stdin-filename names it)")
    if from_stdin and sys.stdin.isatty():
        raise UsageError(
            "standard input is a terminal: pipe the data in (... | casbackup backup --stdin)"
        )
    spec = StreamBackup(name=name, command=paths if from_command else None,
                        type=backup_type or "incremental", tags=tags, dry_run=dry_run)  # fmt: skip
    result = backup_stream(repo, spec, sys.stdin.buffer)
    if not global_options(ctx).quiet:
        for note in result.notes:  # as a backup of folders reports them while it runs
            warn(note)
    render_backup_result(ctx, result, dry_run)
    _auto_verify(repo, ctx, result, bool(auto_verify))


def _stop_warming_for_first(ctx: click.Context, index: int = 0) -> Callable[[bool], None] | None:
    """For the command's backup ``index`` (PATHS, --app, each of --all): its warmer stops
    as soon as it turns out to read every file (``WarmAhead.parent_chosen``)."""
    ahead = ctx.meta.get(PREPARED)
    return ahead.parent_chosen(index) if isinstance(ahead, WarmAhead) else None


def _exclude_size(value: str | None) -> int | None:
    """--exclude-larger-than SIZE in bytes (0: no limit), None when not given."""
    if value is None:
        return None
    from casbackup.config.model import exclude_size

    try:
        return exclude_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _delta_files(value: str | None) -> int | None:
    """--delta-files SIZE in bytes (0: off), None when not given; at least 1 MiB."""
    if value is None:
        return None
    from casbackup.config.model import delta_files_size

    try:
        return delta_files_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _wants_verify(flag: bool | None, config: Any, app_name: str) -> bool:
    if flag is not None:
        return flag
    return config is not None and config.auto_verify(app_name)


def _auto_verify(repo: Repository, ctx: click.Context, result: BackupResult, enabled: bool) -> None:
    """Prove the snapshot just written restorable (--auto-verify / verification.auto_verify)."""
    if not enabled or result.snapshot is None:
        return
    from casbackup.cli.config_support import load_cli_config
    from casbackup.verify.sandbox import VerifyOptions, run_verification

    opts = global_options(ctx)
    config = load_cli_config(opts)
    # The config's sandbox, databases' servers and required files, as 'verify' uses them (a
    # backup of PATHS --app NAME records no definition of the application).
    options = VerifyOptions.from_config(config, result.snapshot.app)
    reporter = reporter_for(ctx)
    try:
        outcome = run_verification(repo, result.snapshot, options, reporter)
    finally:
        reporter.done()
    record = outcome.record
    if opts.json:
        emit_json({"message_type": "verification", "snapshot_id": result.snapshot.id, "ok": record.ok,
                   "files_checked": record.files_checked,
                   "failures": [f"{f.path}: {f.problem}" for f in record.failures]})  # fmt: skip
    elif not opts.quiet:
        state = "verified OK" if record.ok else "FAILED verification"
        click.echo(
            f"snapshot {result.snapshot.short_id} {state}: {plural(record.files_checked, 'file')} checked"
        )
    outcome.raise_if_failed()


def _notified_run(repo: Repository, ctx: click.Context, config: Any, app: str,
                  options: BackupOptions, auto_verify: bool | None) -> AppBackupResult:  # fmt: skip
    """Back up one configured application (and verify it when asked), telling its notifiers
    how it went (casbackup/notify/); a notifier's failure is a warning, never the result."""
    from casbackup.errors import VerificationFailed
    from casbackup.notify import BackupNotice

    app_config = config.app(app)
    notice = BackupNotice(app, app_config.notify if app_config else (),
                          offline_mode=config.plugins.offline_mode, warn=warn)  # fmt: skip
    if not options.dry_run:
        notice.started()
    outcome = None
    try:
        outcome = _run_app(repo, ctx, options)
        render_backup_result(ctx, outcome.result, options.dry_run, outcome.dump_warnings)
        _auto_verify(repo, ctx, outcome.result, _wants_verify(auto_verify, config, app))
    except VerificationFailed as exc:
        assert outcome is not None
        notice.failed(exc, outcome.result.snapshot, verification=True)
        raise
    except CasError as exc:
        notice.failed(exc)
        raise
    notice.finished(outcome.result.snapshot, outcome.result.warnings)
    return outcome


def _run_app(repo: Repository, ctx: click.Context, options: BackupOptions) -> AppBackupResult:
    from casbackup.archiver.application import backup_application

    reporter = reporter_for(ctx)
    try:
        return backup_application(repo, options, reporter)
    finally:
        reporter.done()


def _raise_partial(result: BackupResult) -> None:
    if result.warnings:
        raise PartialBackup(
            f"snapshot saved, but {plural(len(result.warnings), 'file or folder', 'files or folders')} could not be read"
        )


def _backup_all(repo: Repository, ctx: click.Context, backup_type: str | None, tags: tuple[str, ...],
                excludes: tuple[str, ...], common: dict[str, Any], auto_verify: bool | None) -> None:  # fmt: skip
    """Each application in turn; one failing does not stop the others, but fails the run.
    A stop does: what it interrupted is raised, and no later application starts."""
    from casbackup.archiver.application import backup_options
    from casbackup.cli.config_support import load_cli_config
    from casbackup.store import stopping

    opts = global_options(ctx)
    config = load_cli_config(opts, required=True, why="--all")
    assert config is not None
    if not config.applications:
        raise UsageError(f"{config.source}: the config lists no applications")
    own = [a.name for a in config.applications if a.repository is not None]
    if own:  # --all writes to one repository: those would land in the wrong one
        raise UsageError(
            f"{', '.join(own)} {'has its' if len(own) == 1 else 'have their'} own repository in "
            "the config: back each of those up with --app NAME (or let casbackup serve do it)"
        )
    failed: list[tuple[str, CasError]] = []
    partial = 0
    ahead = ctx.meta.get(PREPARED)  # from _warm_sources: in the same order as here
    for index, app in enumerate(config.applications):
        if not opts.json and not opts.quiet:
            click.echo(f"== {app.name}")
        if isinstance(ahead, WarmAhead):
            ahead.begin(index)
        try:
            options = backup_options(app, backup_type=backup_type, tags=tags,
                                     extra_excludes=excludes, snapshots=config.snapshots,
                                     **common)  # fmt: skip
            options = replace(options, on_parent_chosen=_stop_warming_for_first(ctx, index))
            outcome = _notified_run(repo, ctx, config, app.name, options, auto_verify)
        except CasError as exc:
            if stopping.stopped() is not None:
                raise  # a stop (Ctrl-C, SIGTERM) ends the run, not only this application
            failed.append((app.name, exc))
            if opts.json:
                emit_json({"message_type": "error", "app": app.name, "message": str(exc),
                           "exit_code": exc.exit_code})  # fmt: skip
            else:
                click.echo(f"error: {printable(exc)}", err=True)
            continue
        partial += bool(outcome.result.warnings)
    if failed:
        codes = {exc.exit_code for _, exc in failed}
        err = CasError(
            f"{len(failed)} of {plural(len(config.applications), 'application')} failed: "
            + ", ".join(name for name, _ in failed)
        )
        err.exit_code = codes.pop() if len(codes) == 1 else EXIT_FATAL
        raise err
    if partial:
        raise PartialBackup(
            f"{plural(partial, 'application')} {'was' if partial == 1 else 'were'} saved "
            "with files that could not be read"
        )


def render_backup_result(ctx: click.Context, result: BackupResult, dry_run: bool,
                         dump_warnings: list[str] | None = None) -> None:  # fmt: skip
    opts = global_options(ctx)
    snap = result.snapshot
    if opts.json:
        doc: dict[str, Any] = {
            "message_type": "summary",
            "dry_run": dry_run,
            "warnings": result.warnings,
            "notes": result.notes,
            "dump_warnings": list(dump_warnings or []),
        }
        if snap is not None:
            doc.update(
                snapshot_id=snap.id, type=snap.type, parent=snap.parent, app=snap.app,
                databases=[asdict(d) for d in snap.databases], **asdict(snap.summary),
            )  # fmt: skip
        emit_json(doc)
        return
    if snap is None:
        click.echo("dry run: nothing was stored")
        return
    if opts.quiet:
        click.echo(snap.id)
        return
    for line in saved_lines(snap):
        click.echo(line)


COMMANDS = [backup]
