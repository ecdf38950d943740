"""A snapshot of one stream: standard input, or what a command writes (restic's ``backup
--stdin`` and ``--stdin-from-command``).

The stream becomes the only file of the snapshot, ``/NAME``; the snapshot's paths are
``("/NAME",)``, so the next backup of the same name (same host, no application) is its
parent, as for a folder. A new chunk is stored as a delta of its counterpart in the
parent's version of the stream when the repository allows deltas (the same rule as database
dumps, archiver/delta_bases.py): a nightly ``pg_dumpall`` or ``redis-cli --rdb -`` piped in
costs about what changed.

A command's stream counts only when the command exits 0: a dump tool that fails half-way
must not leave a truncated "backup" that looks good (``pg_dump | casbackup backup --stdin``
cannot tell: the shell's pipe hides the first program's exit status unless ``pipefail`` is
set; ``--stdin-from-command`` can). Nothing is committed then: the chunks stored are kept
for the next run, no snapshot is written.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from casbackup import __version__
from casbackup.archiver.backup_options import BackupOptions, BackupResult, choose_parent
from casbackup.archiver.base_copies import stream_key
from casbackup.archiver.delta_bases import COPY_REFUTED, BaseFinder, Stopped, store_chunks
from casbackup.chunking.chunker import Chunker
from casbackup.engines.process import StderrDrain
from casbackup.errors import CasError, DatabaseError, Interrupted, UsageError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, Summary, now_utc
from casbackup.repo.tree import Node, NodeKind, valid_name

STDERR_KEPT = 2000  # characters of a failed command's last stderr line in its message
#: Seconds a failed command's standard error may stay open after it exited (``_end``).
STDERR_WAIT_S = 5.0


@dataclass(frozen=True)
class StreamBackup:
    """``name``: the file's name in the snapshot (one path component). ``command``: argv of
    a program whose standard output is the stream (None: this process's standard input).
    ``type``, ``tags``, ``dry_run`` as for a backup of folders."""

    name: str
    command: tuple[str, ...] | None = None
    type: str = "incremental"
    tags: tuple[str, ...] = ()
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not valid_name(os.fsencode(self.name)):
            raise UsageError(
                f"--stdin-filename {self.name!r}: give a file name (not '.', '..', no '/')"
            )
        if self.command is not None and not self.command:
            raise UsageError("--stdin-from-command needs the command to run after --")


def backup_stream(
    repo: Repository,
    spec: StreamBackup,
    stdin: BinaryIO,
    *,
    on_bytes: Callable[[int], None] = lambda n: None,
    stopped: Callable[[], bool] = lambda: False,
) -> BackupResult:
    """Store ``spec``'s stream (``stdin``, or the command's output) as ``/NAME`` and save the
    snapshot. Returns the result (snapshot None for a dry run).

    Raises DatabaseError (exit 27) when the command cannot start or exits non-zero, and
    Interrupted when ``stopped()`` turns true; either way no snapshot is written. Raises
    what the repository raises (CasError)."""
    options = BackupOptions(paths=("/" + spec.name,), type=spec.type, tags=spec.tags)
    reference, reuse = choose_parent(repo, options)
    before = _parent_node(repo, reuse, spec.name) if reuse is not None else None
    bases = None
    key = stream_key("stdin", spec.name)
    if before is not None and repo.deltas_allowed and not spec.dry_run:
        bases = BaseFinder.for_content(repo, before.content, key)
    chunker = Chunker(repo.config.dump_chunker, repo.key.chunker_seed)
    started = time.monotonic()
    time_text, start_ns = now_utc()
    stats0 = (repo.stats_bytes_added, repo.stats_bytes_stored, repo.stats_blobs_added)
    proc = None
    errors: StderrDrain | None = None
    if spec.command is not None:
        try:
            proc = subprocess.Popen(
                list(spec.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise DatabaseError(
                f"cannot run {spec.command[0]}: {exc.strerror or exc}; nothing was stored"
            ) from None
        assert proc.stdout is not None
        source: BinaryIO = proc.stdout  # type: ignore[assignment]
        errors = StderrDrain(proc.stderr)  # type: ignore[arg-type]
    else:
        source = stdin
    try:
        content, digest, size = store_chunks(
            repo, chunker.stream(source), bases, dry_run=spec.dry_run, stopped=stopped,
            on_bytes=on_bytes, copy_key=key,
        )  # fmt: skip
    except Stopped:
        _end(proc, errors, kill=True)
        _keep_stored(repo, spec)
        raise Interrupted("backup interrupted; the chunks stored so far are kept") from None
    except BaseException:
        _end(proc, errors, kill=True)
        _keep_stored(repo, spec)
        raise
    if proc is not None:
        error = _end(proc, errors, kill=False)
        if proc.returncode != 0:
            _keep_stored(repo, spec)
            how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited {proc.returncode}")  # fmt: skip
            detail = f": {error}" if error else ""
            raise DatabaseError(
                f"{spec.command[0]} {how}{detail}; no snapshot saved"  # type: ignore[index]
            )
    # Stored all the same (those chunks whole): the damage is in older snapshots.
    notes = [f"/{spec.name}: {COPY_REFUTED}"] if bases is not None and bases.copy_refuted else []
    _, now_ns = now_utc()
    same = before is not None and (before.content, before.content_hash) == (content, digest)
    node = Node(
        name=os.fsencode(spec.name), kind=NodeKind.FILE, mode=0o600, uid=os.getuid(),
        gid=os.getgid(), mtime_ns=before.mtime_ns if same else now_ns,  # type: ignore[union-attr]
        ctime_ns=before.ctime_ns if same else now_ns,  # type: ignore[union-attr]
        size=size, content=content, content_hash=digest,
    )  # fmt: skip
    root = repo.blob_id(_encoded([node])) if spec.dry_run else repo.save_tree([node])
    is_new, changed = before is None, before is not None and not same
    summary = Summary(
        files_new=int(is_new), files_changed=int(changed),
        files_unchanged=int(not is_new and not changed), files_total=1, bytes_total=size,
        bytes_read=size, bytes_added=repo.stats_bytes_added - stats0[0],
        bytes_stored=repo.stats_bytes_stored - stats0[1],
        blobs_added=repo.stats_blobs_added - stats0[2],
        duration_s=round(time.monotonic() - started, 3),
    )  # fmt: skip
    snap = Snapshot(
        time=time_text, start_ns=start_ns, host=socket.gethostname(), user=getpass.getuser(),
        paths=options.paths, tree=root.hex(), type=spec.type if reuse else "full",
        app=None, tags=spec.tags, parent=reference.id if reference else None,
        base_full=None, summary=summary, program_version=__version__,
    )  # fmt: skip
    if spec.dry_run:
        return BackupResult(None, reference, notes=notes)
    return BackupResult(repo.save_snapshot(snap), reference, notes=notes)


def _parent_node(repo: Repository, parent: Snapshot, name: str) -> Node | None:
    try:
        node = repo.find_node(parent.root, "/" + name)
    except CasError:
        return None
    return node if node is not None and node.kind == NodeKind.FILE else None


def _end(proc: subprocess.Popen[bytes] | None, errors: StderrDrain | None, *, kill: bool) -> str:
    """Wait for the command (killed first when ``kill``); when it failed, its standard
    error's last line.

    The command's exit is what counts, not its pipes' end: a program it started in the
    background (``sh -c 'pg_dump ...; sleep 600'`` stopped half-way leaves the ``sleep``;
    ``... & disown``) holds the pipes open as long as it runs. So standard error is waited
    for only when its last line is needed (a failure), and then for at most
    ``STDERR_WAIT_S``; on a stop not at all: a stop ends the backup at once, not when the
    command's children end (found with ``sh -c 'echo hi; sleep 20'``: SIGTERM took 20 s)."""
    if proc is None or errors is None:
        return ""
    if kill and proc.poll() is None:
        proc.kill()
    assert proc.stdout is not None
    proc.stdout.close()  # a command still writing gets EPIPE/SIGPIPE instead of blocking
    proc.wait()
    if kill or proc.returncode == 0:
        return ""
    lines = [ln for ln in errors.text(STDERR_WAIT_S).decode(errors="replace").splitlines()
             if ln.strip()]  # fmt: skip
    return lines[-1].strip()[:STDERR_KEPT] if lines else ""


def _keep_stored(repo: Repository, spec: StreamBackup) -> None:
    """Index what was stored before a failure, so the next run does not store it again."""
    if spec.dry_run:
        return
    try:
        repo.flush()
    except (CasError, OSError):
        pass


def _encoded(nodes: list[Node]) -> bytes:
    from casbackup.repo.tree import encode_tree

    return encode_tree(nodes)
