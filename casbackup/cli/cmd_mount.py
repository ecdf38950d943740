from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, emit_json_err, printable
from casbackup.cli.signals import native_stop_signals
from casbackup.repo.repository import Repository
from casbackup.vfs.core import Vfs
from casbackup.vfs.fuse import check_fuse, check_mountpoint, holds_entries
from casbackup.vfs.fuse import mount as fuse_mount


def _checked(mountpoint: str) -> str:
    # Runs while parsing, before the repository is opened: no passphrase prompt for nothing.
    check_fuse()
    check_mountpoint(mountpoint)
    return mountpoint


@click.command()
@click.argument("mountpoint", callback=lambda ctx, param, value: _checked(value))
@click.option("--app", help="Show only this application's snapshots.")
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users see the mount (with their permissions checked).",
)
@click.pass_context
@with_repository(lock="shared", reads_only=True)
def mount(
    repo: Repository, ctx: click.Context, mountpoint: str, app: str | None, allow_other: bool
) -> None:
    """Mount the repository read-only at MOUNTPOINT: applications, snapshots, then their files.

    Runs in the foreground until Ctrl-C, SIGTERM or 'fusermount3 -u MOUNTPOINT'. The shared
    lock it holds keeps prune from removing data while the mount is in use.
    """
    opts = global_options(ctx)

    def say(kind: str, message: str) -> None:
        # With --json every line is JSON: the status (mounted, unmounted) on stdout for the
        # script that waits for it, warnings and errors on stderr as everywhere else.
        if opts.json:
            emit = emit_json if kind == "status" else emit_json_err
            emit({"message_type": kind, "message": message, "mountpoint": mountpoint})
        elif kind != "status" or not opts.quiet:
            click.echo(f"{kind}: {printable(message)}" if kind != "status" else message, err=True)

    def warn(message: str) -> None:
        say("warning", message)

    def error(message: str) -> None:
        say("error", message)

    def ready() -> None:
        say("status", f"mounted at {mountpoint} (read-only); press Ctrl-C or run "
            f"'fusermount3 -u {mountpoint}' to unmount")  # fmt: skip

    if holds_entries(mountpoint):
        warn(f"{mountpoint} is not empty: what it holds is hidden until the mount ends")
    vfs = Vfs(repo, app=app, on_warning=warn)
    if app is not None and not vfs.listdir("/"):
        warn(f"no snapshot of application {app!r} yet; the mount shows new ones as they appear")
    try:
        with native_stop_signals():  # libfuse's own handlers unmount on SIGTERM/SIGHUP
            fuse_mount(vfs, mountpoint, allow_other=allow_other, on_ready=ready, on_error=error)
    finally:
        vfs.close()
    say("status", f"unmounted {mountpoint}")


COMMANDS = [mount]
