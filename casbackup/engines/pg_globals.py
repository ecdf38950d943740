"""PostgreSQL cluster globals and privileges: what a database dump alone does not carry.

`pg_dump` leaves out roles, role memberships and tablespaces: they belong to the server, not to
one database. On a rebuilt server, a dump that GRANTs to a missing role used to fail as a
whole. Three pieces close that gap:

- Backup: with `options.globals` on (the default), `pg_dumpall --globals-only` is streamed
  into the snapshot beside the dump, as `/.databases/<name>.globals.sql`, one file per
  configured database (two databases of one server each keep their own copy: a snapshot
  restores without the other application's). The dump's record names it (properties
  "globals"). Role passwords (SCRAM verifiers) are kept when the dumping user may read them
  (a superuser); otherwise roles are kept without passwords ("globals_passwords": false).
- Restore (`apply_globals`): the roles the target lacks are created with their attributes;
  a role that already exists is left exactly as it is (neither an error nor altered: its
  password on this server is not replaced behind the administrator's back). Memberships and
  tablespaces are applied; each statement that fails is named in a warning.
- Privileges (`AclPass`): the data is loaded with `pg_restore --no-privileges` in one
  transaction, and the dump's ACL and DEFAULT ACL entries are applied afterwards, statement by
  statement (pg_sql.py), each one that fails named in a warning: a GRANT to a role this server
  lacks no longer sinks the restore. The ACL text comes from the dump's table of contents,
  which a `pg_restore -l` reads from the stream while the load runs (the first bytes are kept
  in a private temporary file until it has read the TOC, at most ACL_PREFIX_MAX bytes).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from typing import BinaryIO

from casbackup.engines.base import DatabaseSpec, DumpInfo, DumpStream
from casbackup.engines.leftovers import process_tag, sweep_stale_folders
from casbackup.engines.pg_restrict import StableKeyStream
from casbackup.engines.pg_sql import (
    MAX_SCRIPT,
    Failure,
    created_roles,
    guarded_script,
    parse_failures,
    referenced_roles,
    role_of,
    split_statements,
)
from casbackup.engines.process import (
    ProcessDumpStream,
    describe_exit,
    find_tool,
    run_tool,
    summarize,
)
from casbackup.errors import DatabaseError

GLOBALS_SUFFIX = ".globals.sql"
GLOBALS_FORMAT = "pg-globals-sql"
ACL_PREFIX_MAX = 256 << 20  # bytes of a dump kept to read its TOC for the privileges pass
_HEAD = b"--\n-- PostgreSQL database cluster dump"
# The tool's last lines; a role's comment may hold the words, never at the very end.
_TRAILER = b"\n-- PostgreSQL database cluster dump complete\n--"
_ACL_LINE = re.compile(rb"^\d+; \d+ \d+ (ACL|DEFAULT ACL) ", re.M)
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


def globals_file_name(db_name: str) -> str:
    return db_name + GLOBALS_SUFFIX


def recorded_globals(properties: Mapping[str, object] | None) -> str | None:
    """The globals file a dump's record names (a bare file name beside the dump), or None.

    DatabaseError when it is there but not a plain file name: records are untrusted."""
    if not isinstance(properties, Mapping):
        return None
    name = properties.get("globals")
    if name is None:
        return None
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name in (".", ".."):
        raise DatabaseError(f"the dump's recorded globals file {name!r} is not a file name")
    return name


def utf8_env(env: dict[str, str]) -> dict[str, str]:
    """Globals are read and written as UTF-8 whatever the server's encoding."""
    return {**env, "PGCLIENTENCODING": "UTF8"}


def dump_globals(
    spec: DatabaseSpec, conninfo: str, env: dict[str, str], superuser: bool, server_version: str
) -> DumpStream:
    """`pg_dumpall --globals-only` as a stream (finish() checks its head and trailer), its
    `\\restrict` key derived from its content (pg_restrict.py): unchanged globals give an
    identical file.

    `superuser` says whether role passwords can be read (pg_authid); without it the roles
    are dumped with --no-role-passwords rather than failing the backup."""
    argv = [find_tool("pg_dumpall"), "--globals-only", "--no-password", "--dbname", conninfo]
    if not superuser:
        argv.append("--no-role-passwords")

    def validate(head: bytes, tail: bytes, size: int) -> None:
        if not head.startswith(_HEAD) or not tail.rstrip().endswith(_TRAILER):
            raise DatabaseError(
                f"database {spec.name!r}: pg_dumpall --globals-only output is incomplete"
            )

    def make_info(size: int) -> DumpInfo:
        return DumpInfo("postgresql", GLOBALS_FORMAT, server_version, {}, "sql", size, True,
                        {"passwords": superuser})  # fmt: skip

    what = f"globals of database {spec.name!r}"
    # The tool's random \restrict key would make every night's file new: pg_restrict.py.
    return StableKeyStream(ProcessDumpStream(argv, what=what, env=utf8_env(env),
                                             validate=validate, make_info=make_info), what)  # fmt: skip


def read_script(stream: BinaryIO, what: str, encoding: str = "utf-8") -> str:
    data = stream.read(MAX_SCRIPT + 1)
    if len(data) > MAX_SCRIPT:
        raise DatabaseError(f"{what} is larger than {MAX_SCRIPT >> 20} MiB; refused")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise DatabaseError(f"{what} is not {encoding} text") from None


def run_guarded(
    argv: list[str], statements: list[str], env: dict[str, str], what: str,
    encoding: str = "utf-8",
) -> list[Failure]:  # fmt: skip
    """Run `statements` through psql (argv: connection included), each in its own
    sub-transaction; returns the ones the server refused."""
    script = guarded_script(statements)
    try:
        proc = subprocess.run(
            [*argv, "-v", "ON_ERROR_STOP=1"],
            input=script.encode(encoding),
            capture_output=True,
            env=env,
            timeout=3600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DatabaseError(f"{what}: psql timed out") from None
    if proc.returncode != 0:
        raise DatabaseError(
            f"{what}: {describe_exit('psql', proc.returncode)}: {summarize(proc.stderr)}"
        )
    return parse_failures(proc.stderr.decode("utf-8", "replace"), statements)


def apply_globals(
    spec: DatabaseSpec, stream: BinaryIO, psql_argv: list[str], env: dict[str, str],
    existing_roles: set[str],
) -> tuple[int, int, list[str]]:  # fmt: skip
    """Apply a globals script to the server: (roles created, roles left as they were,
    warnings naming each statement the server refused).

    `psql_argv` connects to the maintenance database; `existing_roles` are this server's."""
    what = f"globals of database {spec.name!r}"
    statements = split_statements(read_script(stream, what))
    created = created_roles(statements)
    skip = {i for name, i in created.items() if name in existing_roles}
    skip |= {i for i, s in enumerate(statements) if role_of(s) in existing_roles}
    if not any(s.lower().startswith("create role") for s in statements) and statements:
        raise DatabaseError(f"{what}: the file holds no roles; not a globals dump")
    todo = [i for i in range(len(statements)) if i not in skip]
    failures = run_guarded(psql_argv, [statements[i] for i in todo], utf8_env(env), what)
    warnings = [f"database {spec.name!r}: global not applied: {f.describe()}" for f in failures]
    kept = len([n for n in created if n in existing_roles])
    failed = {todo[f.index] for f in failures}
    made = len([n for n, i in created.items() if n not in existing_roles and i not in failed])
    return made, kept, warnings


# --- the privileges pass ----------------------------------------------------------------------


# The privileges pass's private folder in the temp folder: ``casb-acl-<pid>-<token>-<random>``
# (leftovers.py). It holds the dump's first bytes (up to ACL_PREFIX_MAX, data included): a
# restore killed outright leaves it, and the next one removes it.
_ACL_FOLDER = re.compile(r"casb-acl-([0-9]{1,10})-([0-9a-f]{8})-[A-Za-z0-9_]+\Z")


def sweep_acl_folders() -> int:
    """Remove the privileges-pass folders of restores that were killed (this user's only,
    real folders only); how many. Never raises."""
    # rmtree works through file descriptors here (avoids_symlink_attacks): a link planted
    # inside cannot make it remove anything outside the folder.
    return len(sweep_stale_folders(tempfile.gettempdir(), _ACL_FOLDER, shutil.rmtree))


class AclPass:
    """Reads the ACL entries of a custom dump while the dump streams into `pg_restore`.

    Use: wrap the stream with `tee(stream)` and feed the result to the data load; after the
    load, `statements()` returns the dump's GRANT/REVOKE/ALTER DEFAULT PRIVILEGES statements
    (or raises DatabaseError when the TOC could not be read). `close()` always.
    """

    def __init__(self, what: str, env: dict[str, str]) -> None:
        self._what = what
        self._env = env
        sweep_acl_folders()
        self._dir = tempfile.TemporaryDirectory(prefix=f"casb-acl-{process_tag()}-")
        self._prefix_path = os.path.join(self._dir.name, "prefix.dump")
        self._list_path = os.path.join(self._dir.name, "toc.list")
        self._prefix = open(self._prefix_path, "wb")  # noqa: SIM115 - closed in close()
        self._kept = 0
        self._overflow = False
        with open(self._list_path, "wb") as out:
            self._lister: subprocess.Popen[bytes] | None = subprocess.Popen(
                [find_tool("pg_restore"), "-l"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.DEVNULL,
                env=env,
            )

    @property
    def prefix_path(self) -> str:
        """The dump's first bytes (its table of contents), complete once `statements()`
        returned; removed by `close()`."""
        return self._prefix_path

    def scratch_path(self, name: str) -> str:
        """A private path for a file of the caller's, removed by `close()`."""
        return os.path.join(self._dir.name, name)

    def tee(self, stream: BinaryIO) -> BinaryIO:
        return _TeeReader(stream, self._feed)  # type: ignore[return-value]

    def _feed(self, chunk: bytes) -> None:
        lister = self._lister
        if lister is None or not chunk:
            return
        if self._kept + len(chunk) > ACL_PREFIX_MAX:
            self._overflow = True
            self._stop_lister(kill=True)
            return
        self._prefix.write(chunk)
        self._kept += len(chunk)
        try:
            assert lister.stdin is not None
            lister.stdin.write(chunk)
            lister.stdin.flush()
        except (BrokenPipeError, OSError):
            self._stop_lister(kill=False)  # it read the TOC and exited: all it needs

    def _stop_lister(self, kill: bool) -> None:
        lister, self._lister = self._lister, None
        if lister is None:
            return
        if kill:
            lister.kill()
        with contextlib.suppress(BrokenPipeError, OSError):
            assert lister.stdin is not None
            lister.stdin.close()
        self._lister_code = lister.wait()

    def statements(self, encoding_hint: str | None = None) -> tuple[list[str], str]:
        """(the dump's privilege statements, the client encoding their text is in)."""
        self._stop_lister(kill=False)
        self._prefix.close()
        if self._overflow:
            raise DatabaseError(
                f"{self._what}: the dump's table of contents is larger than "
                f"{ACL_PREFIX_MAX >> 20} MiB; privileges were not restored"
            )
        if getattr(self, "_lister_code", 1) != 0:
            raise DatabaseError(f"{self._what}: could not list the dump's contents")
        with open(self._list_path, "rb") as f:
            listing = f.read()
        lines = [ln for ln in listing.splitlines() if _ACL_LINE.match(ln)]
        if not lines:
            return [], "UTF8"
        acl_list = os.path.join(self._dir.name, "acl.list")
        with open(acl_list, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        sql = run_tool([find_tool("pg_restore"), "-L", acl_list, "-f", "-", self._prefix_path],
                       what=self._what, env=self._env)  # fmt: skip
        # The text is in the dump's encoding (its own SET client_encoding says which); every
        # byte is kept as is (latin-1 maps bytes 1:1), and the syntax is ASCII in every
        # server encoding, so splitting is safe and the statements go back byte for byte.
        text = sql.decode("latin-1")
        m = re.search(r"SET client_encoding = '([A-Za-z0-9_]{1,32})';", text)
        return split_statements(text), (m.group(1) if m else "UTF8")

    def close(self) -> None:
        self._stop_lister(kill=True)
        with contextlib.suppress(OSError):
            self._prefix.close()
        self._dir.cleanup()


class _TeeReader:
    """A read-only stream that hands every chunk it returns to `sink` too."""

    def __init__(self, stream: BinaryIO, sink: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._sink = sink

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self._sink(chunk)
        return chunk


def apply_acls(
    spec: DatabaseSpec, statements: list[str], encoding: str, psql_argv: list[str],
    env: dict[str, str], kind: str = "privilege",
) -> list[str]:  # fmt: skip
    """Apply privilege statements (or others of a dump, `kind` naming them) to the restored
    database; a warning per refused one. `statements` are latin-1 text of the bytes in the
    dump's `encoding` (AclPass.statements)."""
    if not statements:
        return []
    what = f"{kind}s of database {spec.name!r}"
    failures = run_guarded(
        psql_argv, statements, {**env, "PGCLIENTENCODING": encoding}, what, "latin-1"
    )
    return [
        f"database {spec.name!r}: {kind} not restored: "
        f"{_readable(f.statement, encoding)}: {f.error}"
        for f in failures
    ]


def _readable(text: str, encoding: str) -> str:
    if encoding.upper() in ("UTF8", "UNICODE"):
        return text.encode("latin-1").decode("utf-8", "replace")
    return text


def dump_roles(pg_restore: str, dump_file: str, env: Mapping[str, str], what: str) -> set[str]:
    """The roles a custom dump's privileges name (grantees, FOR ROLE targets, grantors)."""
    listing = run_tool([pg_restore, "-l", dump_file], what=what, env=env)
    lines = [ln for ln in listing.splitlines() if _ACL_LINE.match(ln)]
    if not lines:
        return set()
    with tempfile.NamedTemporaryFile("wb", prefix="casb-acl-", suffix=".list") as f:
        f.write(b"\n".join(lines) + b"\n")
        f.flush()
        sql = run_tool([pg_restore, "-L", f.name, "-f", "-", dump_file], what=what, env=env)
    text = sql.decode("latin-1")
    m = re.search(r"SET client_encoding = '([A-Za-z0-9_]{1,32})';", text)
    encoding = m.group(1) if m else "UTF8"
    return {_readable(r, encoding) for r in referenced_roles(split_statements(text))}


def globals_roles(stream: BinaryIO, what: str) -> set[str]:
    """The roles a globals file creates."""
    return set(created_roles(split_statements(read_script(stream, what))))
