"""MariaDB accounts and their grants, kept beside a database's dump (``options.globals``,
default on), and created again on a rebuilt server before the dump loads.

A MariaDB dump holds the database, not who may use it: on a fresh server the application's
account (``'shop'@'%'`` and its ``GRANT ... ON shop.*``) is missing, so the application
cannot connect after a recovery that reported success. ``mariadb-dump --system=users``
(MariaDB 10.5 and later) writes every account, role, grant and default role of the server,
one statement per line; that file is stored as ``/.databases/<name>.users.sql`` and named by
the dump's record (property ``globals``, as PostgreSQL's cluster globals are).

Restoring follows PostgreSQL's rule for roles (pg_globals.py): an account the server already
has is left as it is (not its password, not its grants); an account it lacks is created with
its grants and default role. The file is read as untrusted: only CREATE USER/ROLE, GRANT,
SET DEFAULT ROLE, ALTER USER and session SET statements are run, anything else is left out
with a warning; statements the server refuses are warnings, never fatal.

Without the privilege to read the accounts (SELECT on ``mysql.global_priv``) or with a dump
tool without ``--system`` (MySQL's mysqldump), the file holds one comment saying why and no
account: the backup goes on (a backup that worked must not start failing), and a restore
says no account was kept.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable
from typing import BinaryIO

from casbackup.engines.base import DatabaseSpec, DumpInfo, DumpStream
from casbackup.engines.my_client import credentials_fd
from casbackup.engines.process import ProcessDumpStream, find_tool, run_tool
from casbackup.errors import DatabaseError

USERS_FORMAT = "mysql-users-sql"
MAX_USERS_SCRIPT = 64 << 20  # bytes: far above any server's accounts; a larger file is refused
_TRAILER = b"-- Dump completed"
NOT_KEPT = "-- casbackup: accounts not kept: "
# mariadb-dump's own import-role dance (it grants itself a role while loading): not ours.
_IMPORT_ROLE = re.compile(r"mariadb_dump_import_role|CURRENT_ROLE\(\)|@current_role", re.I)
_ALLOWED = re.compile(
    r"(?:/\*M?!\d*\s*)?(CREATE\s+USER|CREATE\s+ROLE|GRANT|SET\s+DEFAULT\s+ROLE|ALTER\s+USER|SET)\s",
    re.I,
)
Account = tuple[str, str]  # (user or role name, host; "" for a role)


def users_file_name(name: str) -> str:
    """``<name>.users.sql``: the accounts file beside database ``name``'s dump."""
    return f"{name}.users.sql"


def dump_users(
    spec: DatabaseSpec, client: Callable[[str], list[str]], server_version: str
) -> DumpStream:
    """The server's accounts as a stream (``finish()`` checks the tool's trailer), or a
    one-comment file saying why none were kept. ``client(sql)`` runs SQL as the backup's
    account (DatabaseError when the server refuses)."""
    tool = find_tool("mariadb-dump", "mysqldump")
    reason = _why_not(tool, client)
    if reason is not None:
        return _NoteStream(f"{NOT_KEPT}{reason}\n".encode(), server_version, reason)

    def validate(head: bytes, tail: bytes, size: int) -> None:
        if not tail.rstrip().rpartition(b"\n")[2].startswith(_TRAILER):
            raise DatabaseError(
                f"accounts of database {spec.name!r}: mariadb-dump --system=users output is "
                "incomplete"
            )

    def make_info(size: int) -> DumpInfo:
        return DumpInfo("mysql", USERS_FORMAT, server_version, {}, "sql", size, True,
                        {"accounts": True})  # fmt: skip

    with credentials_fd(spec) as fd:  # the tool starts in here: it inherits the fd
        argv = [tool, f"--defaults-extra-file=/dev/fd/{fd}", "--system=users",
                "--skip-dump-date", "--default-character-set=utf8mb4"]  # fmt: skip
        return ProcessDumpStream(argv, what=f"accounts of database {spec.name!r}", env=None,
                                 validate=validate, make_info=make_info, pass_fds=[fd])  # fmt: skip


def _why_not(tool: str, client: Callable[[str], list[str]]) -> str | None:
    """Why the accounts cannot be dumped here, or None."""
    help_text = run_tool([tool, "--help"], what=tool).decode("utf-8", "replace")
    if "--system" not in help_text:
        return f"{tool} has no --system option (MariaDB 10.5 or later has it)"
    # What the tool reads: mysql.user (a view of global_priv), roles_mapping, and each
    # account's SHOW CREATE USER / SHOW GRANTS (another account's need SELECT on mysql.*).
    # A probe of global_priv alone passed with `GRANT SELECT ON mysql.global_priv`, and the
    # tool then failed every backup on mysql.user.
    try:
        client("SELECT 1 FROM mysql.global_priv LIMIT 0; SELECT 1 FROM mysql.user LIMIT 0; "
               "SELECT 1 FROM mysql.roles_mapping LIMIT 0;")  # fmt: skip
        other = client(
            "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user WHERE "
            "CONCAT(User, '@', Host) <> CURRENT_USER() AND Host <> '' LIMIT 1;"
        )
        if other:  # the server's own quoting of a name it holds
            client(f"SHOW CREATE USER {other[0]}; SHOW GRANTS FOR {other[0]};")
    except DatabaseError:
        return "the backup's account may not read the accounts (GRANT SELECT ON mysql.* TO it)"
    return None


class _NoteStream(DumpStream):
    """A fixed file (a comment saying why no account is kept) in place of the tool's output."""

    def __init__(self, data: bytes, server_version: str, reason: str) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self._size = len(data)
        self._version = server_version
        self._reason = reason

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(b)

    def finish(self) -> DumpInfo:
        # "why": for the backup's notice (this file gets no record of its own).
        return DumpInfo("mysql", USERS_FORMAT, self._version, {}, "sql", self._size, True,
                        {"accounts": False, "why": self._reason})  # fmt: skip


def parse_account(text: str, pos: int) -> tuple[Account, int] | None:
    """The account named at ``text[pos:]`` (spaces skipped): ```u```@```h```, ``'u'@'h'``,
    or a role ```r```; with the index after it. None when no quoted name is there."""
    user, pos = _quoted(text, pos)
    if user is None:
        return None
    if not text.startswith("@", pos):
        return (user, ""), pos
    host, pos = _quoted(text, pos + 1)
    return ((user, host), pos) if host is not None else None


def _quoted(text: str, pos: int) -> tuple[str | None, int]:
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text) or text[pos] not in "`'\"":
        return None, pos
    quote, out, pos = text[pos], [], pos + 1
    while pos < len(text):
        c = text[pos]
        if c == "\\" and quote != "`" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif c == quote and text.startswith(quote * 2, pos):
            out.append(quote)
            pos += 2
        elif c == quote:
            return "".join(out), pos + 1
        else:
            out.append(c)
            pos += 1
    return None, pos


def statement_account(line: str) -> Account | None:
    """The account a statement of the accounts file creates or changes; None for one that
    names none (a session SET)."""
    upper = line.upper()
    for word in ("CREATE USER ", "CREATE ROLE ", "ALTER USER "):
        at = upper.find(word)
        if at >= 0:
            start = at + len(word)
            if upper.startswith("IF NOT EXISTS ", start):
                start += len("IF NOT EXISTS ")
            found = parse_account(line, start)
            return found[0] if found else None
    # GRANT ... TO acct [IDENTIFIED ...|WITH ...]; SET DEFAULT ROLE r FOR acct
    end = min([i for w in (" IDENTIFIED ", " WITH ", " REQUIRE ", " */")
               if (i := upper.find(w)) >= 0] or [len(upper)])  # fmt: skip
    for word in (" TO ", " FOR "):
        at = upper.rfind(word, 0, end)
        if at >= 0:
            found = parse_account(line, at + len(word))
            return found[0] if found else None
    return None


def select_statements(script: str, existing: set[Account]) -> tuple[list[str], int, int, list[str]]:
    """(statements to run, accounts to create, accounts already on the server, warnings) for
    an accounts file and the server's ``existing`` accounts."""
    run: list[str] = []
    new: set[Account] = set()
    kept: set[Account] = set()
    warnings: list[str] = []
    for raw in script.splitlines():
        line = raw.strip()
        if not line or line.startswith(("--", "/*M!999999")) or _IMPORT_ROLE.search(line):
            continue  # comments, the sandbox-mode marker, the tool's import-role dance
        if re.match(r"SET\s+ROLE\s", line, re.I):
            continue  # the dance's end: SET ROLE NONE
        if not _ALLOWED.match(line) or not line.endswith(";"):
            warnings.append(f"left out what is no account statement: {line[:80]!r}")
            continue
        account = statement_account(line)
        if account is None:
            if re.search(r"\bGLOBAL\b|\bPERSIST|@@GLOBAL", line, re.I):
                warnings.append(f"left out a server-wide setting: {line[:80]!r}")
            elif re.match(r"(?:/\*!\d*\s*)?SET\s", line, re.I):
                run.append(line)  # the session's settings the file starts and ends with
            else:
                warnings.append(f"left out a statement naming no account: {line[:80]!r}")
            continue
        if account in existing:
            kept.add(account)
            continue
        new.add(account)
        run.append(line)
    return run, len(new), len(kept), warnings


def read_users_script(stream: BinaryIO, what: str) -> str:
    """An accounts file's text (at most ``MAX_USERS_SCRIPT`` bytes of UTF-8)."""
    data = stream.read(MAX_USERS_SCRIPT + 1)
    if len(data) > MAX_USERS_SCRIPT:
        raise DatabaseError(f"{what} is larger than {MAX_USERS_SCRIPT >> 20} MiB; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DatabaseError(f"{what} is not UTF-8 text") from None


def not_kept_reason(script: str) -> str | None:
    """Why a file holds no accounts (its comment), or None."""
    first = script.lstrip().splitlines()[0] if script.strip() else ""
    return first[len(NOT_KEPT) :] if first.startswith(NOT_KEPT) else None


EXISTING_SQL = "SELECT HEX(User), HEX(Host) FROM mysql.user;"


def existing_accounts(rows: list[str]) -> set[Account]:
    """The accounts ``EXISTING_SQL``'s rows name (roles with host "")."""
    found = set()
    for row in rows:
        parts = row.split("\t")
        if len(parts) == 2:
            user, host = (bytes.fromhex(p).decode("utf-8", "replace") for p in parts)
            found.add((user, host))
    return found


def apply_users(
    name: str, stream: BinaryIO, existing: set[Account], run_sql: Callable[[str], str]
) -> tuple[str, list[str]]:
    """Create the accounts of an accounts file that the server lacks (``existing``), with their
    grants: (a one-line summary, warnings). ``run_sql(script)`` runs a script through the
    client with --force and returns its standard error (one line per refused statement)."""
    what = f"accounts of database {name!r}"
    script = read_users_script(stream, what)
    reason = not_kept_reason(script)
    if reason is not None:
        return f"database {name!r}: no accounts were kept with the backup ({reason})", []
    run, made, kept, warnings = select_statements(script, existing)
    if made:
        errors = run_sql("\n".join(run) + "\n")
        warnings += [f"{what}: {line.strip()}" for line in errors.splitlines() if line.strip()]
    summary = (f"database {name!r}: accounts from the backup: {made} created, {kept} already "
               "here (left as they are)")  # fmt: skip
    return summary, [f"database {name!r}: {w}" if not w.startswith(what) else w for w in warnings]


def restore_users(
    spec: DatabaseSpec, stream: BinaryIO, client: Callable[[str], list[str]]
) -> tuple[str, list[str]]:
    """``apply_users`` on the server of ``spec``: its accounts read with ``client(sql)``, the
    file's statements run through the ``mariadb`` client with --force (each refused one is a
    line of its standard error, so a warning)."""
    existing = existing_accounts(client(EXISTING_SQL))

    def run_sql(script: str) -> str:
        with credentials_fd(spec) as fd:
            argv = [find_tool("mariadb", "mysql"), f"--defaults-extra-file=/dev/fd/{fd}",
                    "--force", "--batch", "--default-character-set=utf8mb4"]  # fmt: skip
            try:
                done = subprocess.run(argv, input=script.encode(), capture_output=True,
                                      pass_fds=[fd], timeout=600)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DatabaseError(f"accounts of database {spec.name!r}: {exc}") from None
        return done.stderr.decode("utf-8", "replace")

    return apply_users(spec.name, stream, existing, run_sql)
