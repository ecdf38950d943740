"""SQLite: a consistent copy of a live database, taken with SQLite's online backup API.

A raw copy of a database file that is being written can be torn (half a transaction, or a WAL not
yet checkpointed): it is never taken. `Connection.backup()` copies every page in one step while
holding a read transaction on the source, so the copy is one committed state; in WAL mode writers
carry on meanwhile, in rollback-journal mode they wait (busy timeout) for the copy to finish.

The copy goes into a private temporary file (mode 0600, in `options["temp_dir"]` or the system
temp folder) that is unlinked as soon as it is open for streaming, so it disappears even if the
process dies then. A backup killed outright while SQLite makes the copy (seconds to minutes
for a large database) leaves it, a whole database's size: named
`casbackup-sqlite-dump-<pid>-<token>-<n>` (leftovers.py), it is removed by the next dump into
that folder once its process is gone. This is the one place casbackup writes a dump to disk:
SQLite's backup API needs a database file as destination, and the copy is what makes the
stream consistent.

A missing database file is an error, never an empty database (ANCHORS.md: a missing SQLite file
backed up as an empty database is one of the silent failures users reported).
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import re
import sqlite3
import stat
import tempfile
from collections.abc import Mapping
from typing import BinaryIO

from casbackup.engines.base import (
    NOT_EMPTY_HINT,
    DatabaseSpec,
    DumpInfo,
    DumpStream,
    RestoreInfo,
    checked_option,
)
from casbackup.engines.leftovers import is_stale, process_tag
from casbackup.errors import DatabaseError

MAGIC = b"SQLite format 3\x00"
KNOWN_OPTIONS = frozenset({"allow_empty", "temp_dir", "busy_timeout"})
_BOOLEANS = ("1", "0", "true", "false", "yes", "no", "on", "off")
_SIDE_FILES = ("-wal", "-shm", "-journal")
# A restore writes the database beside its target as ``.casbackup-sqlite-<pid>-<token>-<n>``
# (pid and a token drawn once per process, n counting), which SQLite may give side files.
# A restore killed outright (SIGKILL, a power cut) leaves them, a whole database's size; the
# next restore into the folder removes those of processes that are gone (`_sweep`,
# leftovers.py). The file restore's temporaries (archiver/targetfs.py) end in digits:
# neither sweep takes the other's.
_TEMP = re.compile(
    r"\.casbackup-sqlite-([0-9]{1,10})-([0-9a-f]{8})-[0-9]+(?:-wal|-shm|-journal)?\Z"
)
# The dump's copy in the temp folder, ``casbackup-sqlite-dump-<pid>-<token>-<n>`` (`_dump_copy`).
_DUMP_TEMP = re.compile(
    r"casbackup-sqlite-dump-([0-9]{1,10})-([0-9a-f]{8})-[0-9]+(?:-wal|-shm|-journal)?\Z"
)
_COUNTER = itertools.count()


def _temporary(folder: str) -> tuple[int, str]:
    """A new private file (0600) for a restore into `folder`: (fd, path)."""
    while True:
        path = os.path.join(folder, f".casbackup-sqlite-{process_tag()}-{next(_COUNTER)}")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue


def _dump_copy(folder: str | None) -> str:
    """A new private file (0600) for the dump's copy in ``folder`` (None: the system temp
    folder), after removing the copies there of dumps whose process is gone (a backup
    killed while SQLite made the copy): only this user's regular files, named as this
    makes them. Raises OSError when the file cannot be made."""
    folder = folder or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = _DUMP_TEMP.match(name)
            if m is None or not is_stale(int(m.group(1)), m.group(2)):
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                    os.unlink(path)
    while True:
        path = os.path.join(folder, f"casbackup-sqlite-dump-{process_tag()}-{next(_COUNTER)}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(path, flags, 0o600))
            return path
        except FileExistsError:
            continue


def _sweep(folder: str, what: str) -> list[str]:
    """Remove what restores into `folder` that were killed left there; a warning each.
    Never raises: a leftover that cannot be removed stays, as it did."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        m = _TEMP.match(name)
        if m is None:
            continue
        if not is_stale(int(m.group(1)), m.group(2)):
            continue  # a restore that is still running
        path = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return [f"{what}: removed {name} from {folder}, left by a restore that was killed"
            for name in removed if not name.endswith(_SIDE_FILES)]  # fmt: skip


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _uri(path: str, mode: str) -> str:
    # mode=rw/ro in a URI makes SQLite refuse to create a missing file instead of creating it.
    return "file:" + _uri_escape(os.path.abspath(path)) + f"?mode={mode}"


def _uri_escape(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per table. A virtual table whose rows cannot be read here is left out: its
    module comes from an extension only the application loads (SpatiaLite's SpatialIndex,
    sqlite-vec's vec0: "no such module"), or it cannot be read for another reason of its
    own. Its file pages are copied like any other, and whatever it stores lives in shadow
    tables, which are counted."""
    rows = conn.execute(
        "SELECT name, sql LIKE 'CREATE VIRTUAL TABLE%' FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    counts: dict[str, int] = {}
    for name, virtual in rows:
        try:
            counts[name] = conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0]
        except sqlite3.Error:
            if not virtual:
                raise
    return counts


def check_option(key: str, value: str) -> str | None:
    """Why an option's value is wrong (for config validation), else None."""
    if key == "allow_empty" and value.strip().lower() not in _BOOLEANS:
        return f"must be true or false, not {value!r}"
    if key == "busy_timeout":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 86400:  # NaN fails too
            return f"must be a number of seconds from 0 to 86400, not {value!r}"
    return None


def _busy_timeout(spec: DatabaseSpec) -> float:
    """options.busy_timeout in seconds (default 60); DatabaseError when malformed."""
    return float(checked_option(spec, "busy_timeout", "60", check_option))


_MAX_LINKS = 40  # as the kernel's own limit on symbolic links followed in one lookup


def _restore_target(path: str, what: str) -> tuple[str, tuple[str, ...]]:
    """Where a restore over ``path`` writes: ``path`` itself, or, when ``path`` is a symbolic
    link, the file it leads to (with a note saying so), so that a database kept on another disk
    through a link is restored there and the link stays, as the backup read it through the link.

    Every link of the chain must belong to root or to the restoring user: a link another user
    planted would otherwise let a restore running as root replace any file (the rule Linux's
    ``fs.protected_symlinks`` applies in shared folders). Returns (path to write, notes).
    Raises DatabaseError for another user's link, a loop, or a link to something not a file.
    """
    current, followed = path, False
    for _ in range(_MAX_LINKS):
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            break  # nothing there yet: the restore creates it (or says why it cannot)
        except OSError as e:
            raise DatabaseError(f"{what}: cannot inspect {current}: {e.strerror}") from None
        if not stat.S_ISLNK(st.st_mode):
            if not stat.S_ISREG(st.st_mode):
                raise DatabaseError(f"{what}: {current} exists and is not a regular file")
            break
        if st.st_uid not in (0, os.geteuid()):
            raise DatabaseError(
                f"{what}: {current} is a symbolic link owned by uid {st.st_uid}, not followed "
                "(remove it, or restore elsewhere with --db-into)"
            )
        target = os.readlink(current)
        current = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(current)), target))
        followed = True
    else:
        raise DatabaseError(f"{what}: {path} is a symbolic link loop")
    if not followed:
        return path, ()
    return current, (
        f"{what}: {path} is a symbolic link: restored the file it leads to, {current}",
    )


def restore_path_problem(spec: DatabaseSpec) -> str | None:
    """Why a restore could not write ``spec.path``, asked before anything is written (recover
    restores the files first): a link the restore would refuse (`_restore_target`), a file
    where one of its folders goes, or a folder the user cannot write. None when it looks fine;
    the restore itself still reports whatever happens later (a full disk)."""
    what = f"database {spec.name!r}"
    try:
        path, _ = _restore_target(_require_path(spec), what)
    except DatabaseError as exc:
        return str(exc)
    node = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(node) and node != os.path.dirname(node):
        node = os.path.dirname(node)
    if not os.path.isdir(node):
        return f"{what}: cannot write {path}: {node} is a file, not a folder"
    if not os.access(node, os.W_OK | os.X_OK):
        return f"{what}: cannot write {path}: {node} is not writable"
    return None


def _require_path(spec: DatabaseSpec) -> str:
    if not spec.path:
        raise DatabaseError(f"database {spec.name!r}: sqlite needs a path")
    return spec.path


class SqliteDumpStream(DumpStream):
    """Streams an already-made consistent copy; the copy is unlinked while it is read."""

    def __init__(self, file: BinaryIO, info: DumpInfo) -> None:
        super().__init__()
        self._file = file
        self._info = info
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._file.readinto(b)  # type: ignore[attr-defined]
        self._read += n or 0
        return n or 0

    def finish(self) -> DumpInfo:
        if self._file.read(1):
            self.close()
            raise DatabaseError("sqlite dump: finish() called before the copy was read to EOF")
        if self._read != self._info.size:
            raise DatabaseError(
                f"sqlite dump: copy is {self._info.size} bytes but {self._read} were read"
            )
        self.close()
        return self._info

    def close(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()
        super().close()


class SqliteEngine:
    name = "sqlite"

    def check_available(self) -> None:
        # The sqlite3 module is part of Python; backup() exists since Python 3.7.
        if not hasattr(sqlite3.Connection, "backup"):
            raise DatabaseError("this Python's sqlite3 module has no online backup API")

    def dump(self, spec: DatabaseSpec) -> DumpStream:
        path = _require_path(spec)
        if not os.path.isfile(path):
            raise DatabaseError(
                f"database {spec.name!r}: SQLite file {path} does not exist "
                "(refusing to back it up as an empty database)"
            )
        timeout = _busy_timeout(spec)
        tmp = _dump_copy(spec.options.get("temp_dir"))
        try:
            try:
                src = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout,
                                      isolation_level=None)  # fmt: skip
                dst = sqlite3.connect(tmp)
                try:
                    _check_magic(path)
                    # backup() retries a locked source every 0.25 s for ever, whatever the
                    # busy timeout: a writer that never lets go would hang the backup. The
                    # read transaction is taken first, under the timeout; the copy runs in it.
                    src.execute("BEGIN")
                    src.execute("SELECT count(*) FROM sqlite_master").fetchall()
                    src.backup(dst)  # pages=-1: one step, one read transaction, one state
                    counts = _count_rows(dst)
                finally:
                    src.close()
                    dst.close()
            except sqlite3.Error as e:
                busy = getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
                hint = (f" (another process kept it locked for over options.busy_timeout = "
                        f"{timeout:g} s)" if busy else "")  # fmt: skip
                raise DatabaseError(f"database {spec.name!r}: cannot copy {path}: {e}{hint}") from e
            if not counts and not spec.option_bool("allow_empty"):
                raise DatabaseError(
                    f"database {spec.name!r}: {path} has no tables; refusing to record an empty "
                    "dump (set options.allow_empty = true if that is expected)"
                )
            file = open(tmp, "rb")  # noqa: SIM115 - handed to the stream, closed by it
        finally:
            # Unlinked while still open: the copy lives exactly as long as the stream.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        size = os.fstat(file.fileno()).st_size
        info = DumpInfo(
            engine=self.name,
            format="sqlite-db",
            server_version=sqlite3.sqlite_version,
            row_counts=counts,
            file_extension="sqlite",
            size=size,
            row_counts_consistent=True,
            properties=file_properties(path),
        )
        return SqliteDumpStream(file, info)

    def restore(
        self,
        spec: DatabaseSpec,
        stream: BinaryIO,
        *,
        overwrite: bool = False,
        properties: Mapping[str, object] | None = None,
    ) -> RestoreInfo:
        """Write the database beside the target, check it, give it the live file's owner and
        mode as the dump recorded them (``properties``; without them, those of the file it
        replaces), then rename it into place.

        The rename is atomic, so a failed restore leaves the target as it was. Restoring over a
        database that is in use is not supported: its users would keep the old file open. An
        owner that cannot be set (not root) is a warning in the result, and then the mode
        goes without setuid/setgid bits.
        """
        path, notes = _restore_target(_require_path(spec), f"database {spec.name!r}")
        if not properties:
            with contextlib.suppress(OSError):
                properties = file_properties(path)
        if os.path.exists(path) and os.path.getsize(path) > 0 and not overwrite:
            raise DatabaseError(
                f"database {spec.name!r}: {path} already exists and is not empty ({NOT_EMPTY_HINT})"
            )
        folder = os.path.dirname(os.path.abspath(path))
        swept = _sweep(folder, f"database {spec.name!r}")
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = _temporary(folder)
        except OSError as e:
            raise DatabaseError(
                f"database {spec.name!r}: cannot write {path}: {_write_problem(e)}"
            ) from None
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            _check_magic(tmp)
            try:
                conn = sqlite3.connect(_uri(tmp, "rw"), uri=True)
                try:
                    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
                    counts = _count_rows(conn)
                finally:
                    conn.close()
            except sqlite3.Error as e:
                raise DatabaseError(
                    f"database {spec.name!r}: restored file is unusable: {e}"
                ) from e
            if result != "ok":
                raise DatabaseError(f"database {spec.name!r}: integrity_check failed: {result}")
            warnings = apply_file_properties(tmp, properties or {}, f"database {spec.name!r}")
            for suffix in _SIDE_FILES:
                # A stale WAL of the old database would be replayed into the new one.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)
            os.replace(tmp, path)
        except BaseException as exc:
            for leftover in (tmp, *(tmp + s for s in _SIDE_FILES)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            if isinstance(exc, OSError):  # a full disk, say: named by the target, not the temp
                raise DatabaseError(
                    f"database {spec.name!r}: cannot write {path}: {_write_problem(exc)}"
                ) from None
            raise
        return RestoreInfo(self.name, path, written, counts, sqlite3.sqlite_version,
                           (*notes, *swept, *warnings))  # fmt: skip

    def row_counts(self, spec: DatabaseSpec) -> dict[str, int]:
        path = _require_path(spec)
        if not os.path.isfile(path):
            raise DatabaseError(f"database {spec.name!r}: SQLite file {path} does not exist")
        try:
            conn = sqlite3.connect(_uri(path, "ro"), uri=True)
            try:
                return _count_rows(conn)
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise DatabaseError(f"database {spec.name!r}: cannot read {path}: {e}") from e

    def drop(self, spec: DatabaseSpec) -> None:
        path = _require_path(spec)
        for p in (path, *(path + s for s in _SIDE_FILES)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _write_problem(exc: OSError) -> str:
    """Why the restored file could not be written: a file where a folder of its path goes
    is named as such (makedirs says 'File exists', mkstemp 'Not a directory')."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        node = os.path.abspath(exc.filename) if isinstance(exc.filename, str) else ""
        while node and node != os.path.dirname(node):
            if os.path.lexists(node) and not os.path.isdir(node):
                return f"{node} is a file, not a folder"
            node = os.path.dirname(node)
    return exc.strerror or str(exc)


def file_properties(path: str) -> dict[str, object]:
    """The live database file's owner (ids and names) and permission bits; raises OSError."""
    st = os.stat(path)
    return {
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": _lookup(pwd.getpwuid, st.st_uid),
        "group": _lookup(grp.getgrgid, st.st_gid),
        "mode": stat.S_IMODE(st.st_mode),
    }


def _lookup(fn: object, ident: int) -> str:
    try:
        return fn(ident)[0]  # type: ignore[operator,no-any-return]
    except (KeyError, OverflowError):
        return ""


def _owner_id(
    properties: Mapping[str, object], name_key: str, id_key: str, by_name: object
) -> int | None:
    """The owner to give: the recorded name where this machine knows it (a rebuilt machine
    may number its users differently), else the recorded id; None when nothing valid."""
    name = properties.get(name_key)
    if isinstance(name, str) and name:
        try:
            return by_name(name)[2]  # type: ignore[operator,no-any-return]
        except KeyError:
            pass
    ident = properties.get(id_key)
    if isinstance(ident, int) and not isinstance(ident, bool) and 0 <= ident < 2**32 - 1:
        return ident
    return None


def apply_file_properties(
    path: str, properties: Mapping[str, object], what: str
) -> tuple[str, ...]:
    """Give ``path`` the recorded owner and mode; returns warnings for what was refused.

    ``properties`` come from the repository: values of the wrong type or range are
    ignored (the file keeps mkstemp's 0600, the safe default), never applied.
    """
    if not isinstance(properties, Mapping):
        raise DatabaseError(f"{what}: the dump's recorded properties are malformed")
    warnings: list[str] = []
    mode = properties.get("mode")
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        mode = None
    uid = _owner_id(properties, "user", "uid", pwd.getpwnam)
    gid = _owner_id(properties, "group", "gid", grp.getgrnam)
    st = os.stat(path)
    if (uid is not None and uid != st.st_uid) or (gid is not None and gid != st.st_gid):
        try:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError as exc:
            warnings.append(f"{what}: owner {uid}:{gid} of {path} not restored: {exc.strerror}")
            if mode is not None:
                mode &= ~0o6000
    if mode is not None:
        os.chmod(path, mode)  # after chown, which clears setuid/setgid
    return tuple(warnings)


def _check_magic(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head and head != MAGIC:
        raise DatabaseError(f"{path} is not an SQLite 3 database")
    if not head:
        raise DatabaseError(f"{path} is empty, not an SQLite 3 database")
