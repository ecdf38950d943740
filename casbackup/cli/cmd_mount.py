from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.repo.repository import Repository
from casbackup.vfs.core import Vfs
from casbackup.vfs.fuse import check_fuse, check_mountpoint
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
@with_repository(lock="shared")
def mount(
    repo: Repository, ctx: click.Context, mountpoint: str, app: str | None, allow_other: bool
) -> None:
    """Mount the repository read-only at MOUNTPOINT: applications, snapshots, then their files.

    Runs in the foreground until Ctrl-C, SIGTERM or 'fusermount3 -u MOUNTPOINT'. The shared
    lock it holds keeps prune from removing data while the mount is in use.
    """
    quiet = global_options(ctx).quiet

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def error(message: str) -> None:
        click.echo(f"error: {message}", err=True)

    def ready() -> None:
        if not quiet:
            click.echo(
                f"mounted at {mountpoint} (read-only); press Ctrl-C or run "
                f"'fusermount3 -u {mountpoint}' to unmount",
                err=True,
            )

    vfs = Vfs(repo, app=app, on_warning=warn)
    if app is not None and not vfs.listdir("/"):
        warn(f"no snapshot of application {app!r} yet; the mount shows new ones as they appear")
    fuse_mount(vfs, mountpoint, allow_other=allow_other, on_ready=ready, on_error=error)
    if not quiet:
        click.echo(f"unmounted {mountpoint}", err=True)


COMMANDS = [mount]
