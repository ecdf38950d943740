from __future__ import annotations

import os
import stat

import click

from casbackup.cli.context import global_options, split_snapshot_path, with_repository
from casbackup.cli.render import emit_json, printable
from casbackup.errors import NotFound
from casbackup.nstime import display_ns, iso_ns
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind

_TYPE_CHAR = {
    NodeKind.FILE: "-", NodeKind.DIR: "d", NodeKind.SYMLINK: "l", NodeKind.FIFO: "p",
    NodeKind.CHARDEV: "c", NodeKind.BLOCKDEV: "b", NodeKind.SOCKET: "s",
}  # fmt: skip


def node_doc(path: bytes, node: Node) -> dict:  # type: ignore[type-arg]
    doc = {
        "path": os.fsdecode(path), "name": os.fsdecode(node.name), "type": node.kind.name.lower(),
        "mode": node.mode, "size": node.size, "uid": node.uid, "gid": node.gid, "user": node.user,
        "group": node.group, "mtime": iso_ns(node.mtime_ns), "mtime_ns": node.mtime_ns,
    }  # fmt: skip
    if node.kind == NodeKind.SYMLINK:
        doc["link_target"] = os.fsdecode(node.link_target)
    if node.content_hash:
        doc["blake3"] = node.content_hash.hex()
    return doc


def long_line(path: bytes, node: Node) -> str:
    """``ls -l``'s line for a node; names escaped for the terminal (``printable``)."""
    perms = stat.filemode(node.mode)[1:]
    when = display_ns(node.mtime_ns)  # integers only: a float rounds and loses nanoseconds
    owner = printable(node.user or str(node.uid))
    group = printable(node.group or str(node.gid))
    text = f"{_TYPE_CHAR[node.kind]}{perms} {owner:>8} {group:>8} {node.size:>12} {when} {printable(path)}"
    if node.kind == NodeKind.SYMLINK:
        text += f" -> {printable(node.link_target)}"
    return text


@click.command()
@click.argument("ref", metavar="SNAPSHOT[:PATH]")
@click.argument("path_arg", metavar="[PATH]", required=False)
@click.option("--app", help="With 'latest': the latest snapshot of this application.")
@click.option("-l", "--long", "long_format", is_flag=True, help="Show mode, owner, size and time.")
@click.option(
    "--recursive/--no-recursive",
    default=None,
    help="List everything below PATH (default: only when no PATH).",
)
@click.pass_context
@with_repository(lock=None)
def ls(
    repo: Repository,
    ctx: click.Context,
    ref: str,
    path_arg: str | None,
    app: str | None,
    long_format: bool,
    recursive: bool | None,
) -> None:
    """List the files of a snapshot, or of one folder in it."""
    opts = global_options(ctx)
    snap_ref, path = split_snapshot_path(ref, path_arg)
    snap = repo.resolve_snapshot(snap_ref, app=app)
    node = repo.find_node(snap.root, path)
    prefix = os.fsencode(path.rstrip("/"))
    if recursive is None:
        recursive = path == "/"
    if node is not None and node.kind != NodeKind.DIR:
        entries = [(prefix, node)]
    else:
        tree = snap.root if node is None else node.subtree
        if tree is None:
            raise NotFound(f"{path} has no contents")
        if recursive:
            entries_iter = repo.walk(tree, prefix)
        else:
            entries_iter = ((prefix + b"/" + n.name, n) for n in repo.load_tree(tree))
        entries = entries_iter  # type: ignore[assignment]
    for p, n in entries:
        if opts.json:
            emit_json(node_doc(p, n))
        elif long_format:
            click.echo(long_line(p, n))
        else:
            click.echo(printable(p))


COMMANDS = [ls]
