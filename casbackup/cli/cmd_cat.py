from __future__ import annotations

import contextlib
import os
import posixpath
import sys
import tempfile
from collections.abc import Iterable, Iterator

import click

from casbackup.archiver.export import FORMATS, archive_stream, tree_members
from casbackup.archiver.stream import ChunkReader
from casbackup.cli.context import split_snapshot_path, with_repository
from casbackup.errors import NotFound, UsageError
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind


@click.command(name="dump")
@click.argument("ref", metavar="SNAPSHOT:PATH")
@click.argument("path_arg", metavar="[PATH]", required=False)
@click.option("--app", help="With 'latest': the latest snapshot of this application.")
@click.option(
    "--archive", type=click.Choice(FORMATS), default="tar", show_default=True,
    help="Format for a folder: tar keeps owners, times to the nanosecond, hard links, "
    "attributes and special files; zip keeps names, modes, times and symbolic links.",
)  # fmt: skip
@click.option(
    "--target", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
    help="Write to FILE instead of standard output (complete or not there at all).",
)  # fmt: skip
@with_repository(lock="shared", reads_only=True)
def dump(repo: Repository, ref: str, path_arg: str | None, app: str | None, archive: str,
         target: str | None) -> None:  # fmt: skip
    """Write one file of a snapshot (a database dump too) to standard output, or a folder
    (the whole snapshot with PATH /) as one tar or zip archive (SNAPSHOT:PATH, or SNAPSHOT
    PATH; restic's dump, borg's export-tar)."""
    snap_ref, path = split_snapshot_path(ref, path_arg)
    snap = repo.resolve_snapshot(snap_ref, app=app)
    node = repo.find_node(snap.root, path)
    if node is None:  # the snapshot's root: a folder whose tree is the snapshot's
        node = Node(name=b"", kind=NodeKind.DIR, subtree=snap.root)
    if node.kind not in (NodeKind.FILE, NodeKind.DIR):
        raise NotFound(f"{path} is not a file or folder in snapshot {snap.short_id}")
    if node.kind == NodeKind.FILE:
        # Size against the chunks and the hash's presence before a byte is written; the
        # content hash when the last byte is (ChunkReader raises IntegrityError, exit 22).
        require_sound_file(node, [loc.raw_len for loc in repo.locate_many(node.content)], path)
        reader = ChunkReader.for_node(repo, node, name=path)
        pieces: Iterator[bytes] = iter(lambda: reader.read(1 << 20), b"")
    else:
        if target is None and sys.stdout.isatty():
            raise UsageError(
                f"{path} is a folder: its {archive} archive would go to the terminal; "
                "redirect standard output or give --target FILE"
            )
        name = "" if path == "/" else posixpath.basename(path)
        pieces = archive_stream(archive, tree_members(repo, node, name))
    if target is None:
        out = sys.stdout.buffer
        for piece in pieces:
            out.write(piece)
        out.flush()
    else:
        write_whole(target, pieces)


def write_whole(target: str, pieces: Iterable[bytes]) -> None:
    """Write ``pieces`` to the file ``target`` under a temporary name beside it, then rename:
    a dump that fails half-way (a damaged chunk, a full disk) leaves no partial file that
    looks complete. Raises what the pieces or the file system raise."""
    folder = os.path.dirname(os.path.abspath(target))
    fd, temp = tempfile.mkstemp(prefix=".casbackup-dump-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


cat = click.Command(name="cat", callback=dump.callback, params=dump.params, help="Alias of 'dump'.")

COMMANDS = [dump, cat]
