"""The ``casbackup`` command: one click group; exceptions become exit codes here and only here."""

from __future__ import annotations

import sys

import click

from casbackup import __version__
from casbackup.cli.context import GlobalOptions
from casbackup.errors import EXIT_FATAL, EXIT_INTERRUPTED, CasError
from casbackup.memory import tune_allocator

# Command name -> the cmd_*.py module that defines it. Modules are imported only when
# their command runs (or for --help): importing all of them cost every command about
# 0.1 s of start-up. tests/cli/test_lazy_commands.py keeps this in step with the modules.
COMMAND_MODULES = {
    "apps": "cmd_apps", "backup": "cmd_backup", "benchmark": "cmd_benchmark", "cat": "cmd_cat",
    "check": "cmd_check", "config": "cmd_config", "db": "cmd_db", "diff": "cmd_diff",
    "dump": "cmd_cat", "find": "cmd_find", "forget": "cmd_forget", "init": "cmd_init",
    "key": "cmd_key", "ls": "cmd_ls", "mount": "cmd_mount", "prune": "cmd_prune",
    "recover": "cmd_recover", "repair": "cmd_repair", "restore": "cmd_restore",
    "snapshots": "cmd_snapshots", "stats": "cmd_stats", "unlock": "cmd_unlock",
    "verify": "cmd_verify",
    "migrate": "cmd_migrate",
    "fs-snapshots": "cmd_fs_snapshots",
}  # fmt: skip


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            import importlib

            for command in importlib.import_module(f"casbackup.cli.{module}").COMMANDS:
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
@click.option("--json", "json_mode", is_flag=True, help="Print JSON (lines) for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and results.")
@click.option("--no-progress", is_flag=True, help="Never show progress bars.")
@click.version_option(__version__, prog_name="casbackup")
@click.pass_context
def cli(ctx: click.Context, repo: str | None, password_file: str | None, password_command: str | None,
        config_path: str | None, json_mode: bool, quiet: bool, no_progress: bool) -> None:  # fmt: skip
    """casbackup: deduplicating, encrypted, verified backups of applications."""
    ctx.obj = GlobalOptions(
        repo, password_file, password_command, json_mode, quiet, not no_progress, config_path
    )


_GLOBAL_FLAGS = {"--json", "-q", "--quiet", "--no-progress"}
_GLOBAL_VALUED = {"-r", "--repo", "--password-file", "--password-command", "--config"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Accept global options after the command too (``casbackup backup -q -r R``), as restic does.

    Options are moved in front of the command name; nothing after ``--`` is touched.
    """
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
    return front + rest


def main(argv: list[str] | None = None) -> None:
    tune_allocator()
    argv = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        code = cli.main(args=argv, prog_name="casbackup", standalone_mode=False)
    except CasError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_FATAL)
    except MemoryError:
        click.echo("error: out of memory", err=True)
        sys.exit(EXIT_FATAL)
    except OSError as exc:
        # Anything the library did not translate: still one line, never a traceback.
        click.echo(
            f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}",
            err=True,
        )
        sys.exit(EXIT_FATAL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
