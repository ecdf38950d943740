from __future__ import annotations

import shutil
import sys

import click

from casbackup.archiver.stream import ChunkReader
from casbackup.cli.context import split_snapshot_path, with_repository
from casbackup.errors import NotFound, UsageError
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.tree import NodeKind


@click.command(name="dump")
@click.argument("ref", metavar="SNAPSHOT:PATH")
@click.argument("path_arg", metavar="[PATH]", required=False)
@click.option("--app", help="With 'latest': the latest snapshot of this application.")
@with_repository(lock="shared", reads_only=True)
def dump(repo: Repository, ref: str, path_arg: str | None, app: str | None) -> None:
    """Write one file of a snapshot (a database dump too) to standard output
    (SNAPSHOT:PATH, or SNAPSHOT PATH)."""
    snap_ref, path = split_snapshot_path(ref, path_arg)
    if path == "/":
        raise UsageError("give the file to write: SNAPSHOT:PATH")
    snap = repo.resolve_snapshot(snap_ref, app=app)
    node = repo.find_node(snap.root, path)
    if node is None or node.kind != NodeKind.FILE:
        raise NotFound(f"{path} is not a file in snapshot {snap.short_id}")
    # Size against the chunks and the hash's presence before a byte is written; the
    # content hash when the last byte is (ChunkReader raises IntegrityError, exit 22).
    require_sound_file(node, [loc.raw_len for loc in repo.locate_many(node.content)], path)
    out = sys.stdout.buffer
    shutil.copyfileobj(ChunkReader.for_node(repo, node, name=path), out, 1 << 20)
    out.flush()


cat = click.Command(name="cat", callback=dump.callback, params=dump.params, help="Alias of 'dump'.")

COMMANDS = [dump, cat]
