"""The ``casbackup`` command: one click group; exceptions become exit codes here and only here."""

from __future__ import annotations

import os
import signal
import sys
import threading

_STOP_SIGNALS_AT_START = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stopped_while_starting(signum: int, _frame: object) -> None:
    # Nothing is open, locked or stored yet: leave at once, as main() reports a stop (one
    # line, or the JSON error object under --json; 128 + the signal's number).
    message = (
        "interrupted"
        if signum == signal.SIGINT
        else f"interrupted ({signal.Signals(signum).name} received)"
    )
    if "--json" in split_global_options(sys.argv[1:])[0]:
        line = (
            f'{{"error": "{message}", "exit_code": {128 + signum}, "kind": "interrupted", '
            '"message_type": "error"}'
        )  # emit_json_err's shape; no import here
    else:
        line = f"error: {message}"
    os.write(2, line.encode() + b"\n")
    os._exit(128 + signum)


_GLOBAL_FLAGS = {"--json", "-q", "--quiet", "--no-progress"}
_GLOBAL_VALUED = {
    "-r",
    "--repo",
    "--password-file",
    "--password-command",
    "--config",
    "--retry-lock",
}


def split_global_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` as (the global options wherever they stand before ``--``, everything else)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in _GLOBAL_FLAGS:
            front.append(arg)
        elif name in _GLOBAL_VALUED and "=" in arg:
            front.append(arg)
        elif arg in _GLOBAL_VALUED and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front, rest


# A Ctrl-C while the imports below load (0.3 s; over a second on a busy machine) ended in a
# traceback of whatever was being imported, and a death by SIGINT instead of exit 130; a
# SIGTERM or SIGHUP there, in a death by the signal instead of its one line and 143 or 129.
_starting = threading.current_thread() is threading.main_thread()
_before_start = {  # one ignored (nohup's SIGHUP) stays ignored
    signum: signal.signal(signum, _stopped_while_starting)
    for signum in _STOP_SIGNALS_AT_START
    if _starting and signal.getsignal(signum) != signal.SIG_IGN
}

import logging  # noqa: E402

import click  # noqa: E402

from casbackup import __version__  # noqa: E402
from casbackup.cli.context import GlobalOptions  # noqa: E402
from casbackup.cli.render import emit_json_err, warn  # noqa: E402
from casbackup.cli.signals import install_stop_signals, interrupted_exit_code, stopped_by  # noqa: E402
from casbackup.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE, CasError, UsageError  # noqa: E402
from casbackup.memory import tune_allocator  # noqa: E402

# main() installs the command's own (None: one set outside Python, Python's in its place).
for _signum, _handler in _before_start.items():
    _default = signal.default_int_handler if _signum == signal.SIGINT else signal.SIG_DFL
    signal.signal(_signum, _handler or _default)

# Command name -> the cmd_*.py module that defines it. Modules are imported only when
# their command runs (or for --help): importing all of them cost every command about
# 0.1 s of start-up. tests/cli/test_lazy_commands.py keeps this in step with the modules.
COMMAND_MODULES = {
    "apps": "cmd_apps", "backup": "cmd_backup", "benchmark": "cmd_benchmark", "cat": "cmd_cat",
    "check": "cmd_check", "config": "cmd_config", "db": "cmd_db", "diff": "cmd_diff",
    "dump": "cmd_cat", "find": "cmd_find", "forget": "cmd_forget", "init": "cmd_init",
    "key": "cmd_key", "ls": "cmd_ls", "mount": "cmd_mount", "prune": "cmd_prune",
    "recover": "cmd_recover", "repair": "cmd_repair", "restore": "cmd_restore",
    "serve": "cmd_serve", "snapshots": "cmd_snapshots", "stats": "cmd_stats",
    "token": "cmd_token", "unlock": "cmd_unlock", "user": "cmd_user", "verify": "cmd_verify",
    "migrate": "cmd_migrate",
    "copy": "cmd_copy",
    "plugins": "cmd_plugins",
    "fs-snapshots": "cmd_fs_snapshots",
    "tag": "cmd_tag",
    "rewrite": "cmd_rewrite",
}  # fmt: skip


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            import importlib

            from casbackup.cli.completion import attach_completers

            for command in importlib.import_module(f"casbackup.cli.{module}").COMMANDS:
                attach_completers(command)  # --app and SNAPSHOT complete from config/repository
                self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-r",
    "--repo",
    envvar="CASBACKUP_REPO",
    metavar="PATH",
    help="Repository location [env: CASBACKUP_REPO].",
)
@click.option(
    "--password-file",
    envvar="CASBACKUP_PASSWORD_FILE",
    metavar="FILE",
    help="Read the passphrase from FILE [env: CASBACKUP_PASSWORD_FILE].",
)
@click.option(
    "--password-command",
    envvar="CASBACKUP_PASSWORD_COMMAND",
    metavar="CMD",
    help="Run CMD and use what it prints as the passphrase.",
)
@click.option(
    "--config",
    "config_path",
    envvar="CASBACKUP_CONFIG",
    metavar="FILE",
    help="Configuration file [env: CASBACKUP_CONFIG].",
)
@click.option(
    "--retry-lock",
    envvar="CASBACKUP_RETRY_LOCK",
    metavar="DURATION",
    help="While another process holds the repository's lock, keep trying for DURATION "
    "(e.g. 30s, 10m, 2h) instead of failing at once with exit 11 [env: CASBACKUP_RETRY_LOCK].",
)
@click.option("--json", "json_mode", is_flag=True, help="Print JSON (lines) for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and results.")
@click.option("--no-progress", is_flag=True, help="Never show progress bars.")
@click.version_option(__version__, prog_name="casbackup")
@click.pass_context
def cli(ctx: click.Context, repo: str | None, password_file: str | None, password_command: str | None,
        config_path: str | None, retry_lock: str | None, json_mode: bool, quiet: bool,
        no_progress: bool) -> None:  # fmt: skip
    """casbackup: deduplicating, encrypted, verified backups of applications."""
    ctx.obj = GlobalOptions(
        repo,
        password_file,
        password_command,
        json_mode,
        quiet,
        not no_progress,
        config_path,
        retry_lock_s=_retry_lock(retry_lock),
    )
    _route_library_log(json_mode, quiet)
    from casbackup import plugins

    plugins.use_config_path(config_path)  # [plugins] of the config this command uses


def _retry_lock(text: str | None) -> float:
    """``--retry-lock`` in seconds (restic's option of the same name); UsageError for a value
    that is not a run time (units.parse_run_time)."""
    if text is None:
        return 0.0
    from casbackup.units import parse_run_time

    try:
        return float(parse_run_time(text))
    except ValueError as exc:
        raise UsageError(f"--retry-lock: {exc}") from None


class _LogToWarnings(logging.Handler):
    """The library's log records (plugins switched off, ...) as the CLI's own warning lines:
    ``warning: ...`` on stderr, or a JSON line under --json (stderr stays JSON there)."""

    def __init__(self, json_mode: bool) -> None:
        super().__init__(logging.WARNING)
        self.json_mode = json_mode

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.json_mode:
            emit_json_err({"message_type": "warning", "message": message})
        else:
            warn(message)


def _route_library_log(json_mode: bool, quiet: bool) -> None:
    root = logging.getLogger("casbackup")
    for handler in [h for h in root.handlers if isinstance(h, _LogToWarnings)]:
        root.removeHandler(handler)
    if not quiet:
        root.addHandler(_LogToWarnings(json_mode))  # so Python's bare last-resort one never prints


def hoist_global_options(argv: list[str]) -> list[str]:
    """Accept global options after the command too (``casbackup backup -q -r R``), as restic does.

    Options are moved in front of the command name; nothing after ``--`` is touched.
    """
    front, rest = split_global_options(argv)
    return front + rest


# click >= 8.2 raises this for a bare 'casbackup' (8.1 prints the help itself).
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


# Set by main() from the command line: whether failures are reported as JSON (--json). Read
# from argv rather than click's context, so usage errors (no context yet) are JSON too.
_json_errors = False


def error_kind(exc: BaseException) -> str:
    """A failure's ``kind`` in its --json error object: the error class in snake case
    (``RepositoryNotFound`` -> ``repository_not_found``), ``usage_error`` for click's usage
    errors, ``interrupted``, ``out_of_memory`` or ``os_error`` (README "Exit codes")."""
    if isinstance(exc, click.UsageError):
        return "usage_error"
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    if isinstance(exc, CasError):
        name = type(exc).__name__
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    if isinstance(exc, OSError):
        return "os_error"
    return "error"


def _interrupted(message: str) -> None:
    signum = stopped_by()
    if signum is not None:
        message += f" ({signal.Signals(signum).name} received)"
    _fail(message, interrupted_exit_code(), "interrupted")


def _fail(message: str, code: int, kind: str) -> None:
    from casbackup.cli.render import printable

    if _json_errors:
        # Under --json a failure is one JSON object on stderr (README "Exit codes"), like the
        # warnings and progress lines there: a script parses stderr, never plain text.
        emit_json_err({"message_type": "error", "error": message, "exit_code": code, "kind": kind})
    else:
        # One line, whatever the message holds (a name with a newline or an escape sequence).
        click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def _usage_message(exc: click.UsageError) -> str:
    """click's usage error as one line, with where to find the right usage."""
    text = " ".join(exc.format_message().split())
    text = text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
    where = exc.ctx.command_path if exc.ctx is not None else "casbackup"
    return f"{text.rstrip('.')} (see '{where} --help')"


def main(argv: list[str] | None = None) -> None:
    global _json_errors
    tune_allocator()
    install_stop_signals()
    front, rest = split_global_options(list(sys.argv[1:] if argv is None else argv))
    _json_errors = "--json" in front
    argv = front + rest
    try:
        code = cli.main(args=argv, prog_name="casbackup", standalone_mode=False)
    except CasError as exc:
        if exc.exit_code == EXIT_INTERRUPTED:
            _interrupted(str(exc))
        _fail(str(exc), exc.exit_code, error_kind(exc))
    except (click.exceptions.Abort, KeyboardInterrupt):
        _interrupted("interrupted")
    except _NO_ARGS_IS_HELP as exc:
        if _json_errors:  # a script asked for JSON: the usage error, not the help text
            where = exc.ctx.command_path if exc.ctx is not None else "casbackup"
            _fail(f"missing command (see '{where} --help')", EXIT_USAGE, "usage_error")
        exc.show()  # no command at all: the help is the most useful answer
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        # The README promises one line starting with 'error:' and exit 2, not click's
        # four-line Usage block ('--help' still shows the usage).
        _fail(_usage_message(exc), EXIT_USAGE, "usage_error")
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code, "error")
    except BrokenPipeError:
        sys.exit(EXIT_FATAL)
    except MemoryError:
        _fail("out of memory", EXIT_FATAL, "out_of_memory")
    except OSError as exc:
        # Anything the library did not translate: still one line, never a traceback.
        name = exc.filename
        where = f": {os.fsdecode(name) if isinstance(name, str | bytes) else name}" if name else ""
        _fail(f"{exc.strerror or exc}{where}", EXIT_FATAL, "os_error")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
