"""Running database client tools: bounded streaming, stderr draining, clear failures.

Every child gets its secrets through its environment or an inherited pipe, never argv; every
failure becomes a DatabaseError whose one-line message ends with the last lines of the tool's
stderr, which is what a user needs to fix it.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from casbackup.engines.base import DumpInfo, DumpStream
from casbackup.errors import DatabaseError
from casbackup.threadsig import quiet_thread

STDERR_KEEP = 64 * 1024  # bytes of a tool's stderr kept for the error message
_TAIL_KEEP = 4096  # bytes of a dump's end kept to check its trailer
_HEAD_KEEP = 64  # bytes of a dump's start kept to check its magic
_EXIT_GRACE = 60.0  # seconds a tool may take to exit after closing its stdout


def find_tool(*names: str) -> str:
    """The absolute path of the first of `names` on PATH, else DatabaseError naming them."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise DatabaseError(
        f"{' or '.join(names)} not found on PATH: install the database client tools"
    )


# What a database client tool may see of casbackup's environment: where to find programs
# and libraries, who and where it runs, locale and time zone, TLS trust, and the tools' own
# settings (PGHOST, PGSSLMODE, MYSQL_HOST, ...). Nothing else: casbackup's own secrets
# (CASBACKUP_PASSWORD, ...) and the variables other databases' passwords live in
# (``password_env``) never reach a child.
_CHILD_KEEP = frozenset(
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
     "SSL_CERT_FILE", "SSL_CERT_DIR"]
)  # fmt: skip
_CHILD_KEEP_PREFIXES = ("LC_", "PG", "MYSQL_", "MARIADB_")
#: Never passed on, whatever the lists above say.
SECRET_PREFIX = "CASBACKUP_"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a database client tool: the allowed part of ours, plus ``extra``
    (the one password that tool needs, e.g. PGPASSWORD)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in _CHILD_KEEP or k.startswith(_CHILD_KEEP_PREFIXES))
        and not k.startswith(SECRET_PREFIX)
    }
    # English messages so the one-line error summaries are what users can search for.
    env["LC_MESSAGES"] = "C"
    env.pop("LC_ALL", None)
    if extra:
        env.update(extra)
    return env


def summarize(stderr: bytes, limit: int = 400) -> str:
    """The last meaningful lines of a tool's stderr, as one line."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    text = "; ".join(lines[-3:])
    if len(text) > limit:
        text = "..." + text[-limit:]
    return text or "no error output"


class StderrDrain:
    """Reads a pipe to EOF on a thread, keeping only its last STDERR_KEEP bytes."""

    def __init__(self, pipe: BinaryIO | None) -> None:
        self._buf = bytearray()
        self._pipe = pipe
        self._thread = quiet_thread(self._run)
        if pipe is not None:
            self._thread.start()

    def _run(self) -> None:
        assert self._pipe is not None
        try:
            while chunk := self._pipe.read1(65536):  # type: ignore[attr-defined]
                self._buf += chunk
                if len(self._buf) > STDERR_KEEP:
                    del self._buf[: len(self._buf) - STDERR_KEEP]
        except (OSError, ValueError):
            pass  # the pipe was closed under us by close(): nothing more to keep

    def text(self, timeout: float = 5.0) -> bytes:
        if self._pipe is not None:
            self._thread.join(timeout)
        return bytes(self._buf)


def read_until_exit(proc: subprocess.Popen[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of ``proc``'s standard output: read to its end, or until
    ``proc`` has exited and the pipe holds nothing more, whichever comes first.

    Reading to end of file alone waits for every process holding the pipe: a command that
    starts a helper in the background (``sh -c 'echo pw; agent &'``) returned only when the
    helper ended (found with a password command: 25 s for ``sleep 25 &``). What ``proc``
    wrote before it exited is in the pipe by then, so nothing of its own output is lost."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(out) < limit:
            exited = proc.poll() is not None
            if sel.select(0 if exited else 0.1):
                chunk = os.read(fd, min(65536, limit - len(out)))
                if not chunk:
                    break
                out += chunk
            elif exited:
                break
    return bytes(out)


def spawn_tool(
    argv: Sequence[str],
    *,
    what: str,
    stdin: int,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a database tool with piped stdout and stderr, ``stdin`` as given (a
    ``subprocess`` constant) and ``env`` (``child_env()`` when None). Raises DatabaseError
    ("install the client tools") when the program does not exist."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else child_env(),
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise DatabaseError(f"{what}: {argv[0]} not found: install the client tools") from e


def describe_exit(tool: str, returncode: int) -> str:
    if returncode < 0:
        return f"{tool} was killed by signal {-returncode}"
    return f"{tool} exited with status {returncode}"


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    timeout: float | None = 600.0,
) -> bytes:
    """Run a short client command (a query, a CREATE DATABASE) and return its stdout.

    For small outputs only; dumps and restores stream through `ProcessDumpStream`/`feed_tool`.
    """
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            env=dict(env) if env is not None else child_env(),
            pass_fds=tuple(pass_fds),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise DatabaseError(f"{argv[0]} not found: install the database client tools") from e
    except subprocess.TimeoutExpired as e:
        raise DatabaseError(f"{what}: {os.path.basename(argv[0])} timed out") from e
    if proc.returncode != 0:
        tool = os.path.basename(argv[0])
        raise DatabaseError(
            f"{what}: {describe_exit(tool, proc.returncode)}: {summarize(proc.stderr)}"
        )
    return proc.stdout


def feed_tool(
    argv: Sequence[str],
    stream: BinaryIO,
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    bufsize: int = 1 << 20,
) -> int:
    """Copy `stream` into a tool's stdin in bounded pieces; return the bytes fed.

    A tool that dies early shows up as a broken pipe: its exit status and stderr then explain
    why, which is what the user needs rather than "Broken pipe".
    """
    tool = os.path.basename(argv[0])
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else child_env(),
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise DatabaseError(f"{argv[0]} not found: install the database client tools") from e
    drain = StderrDrain(proc.stderr)  # type: ignore[arg-type]
    fed = 0
    try:
        assert proc.stdin is not None
        while chunk := stream.read(bufsize):
            try:
                proc.stdin.write(chunk)
            except BrokenPipeError:
                break
            fed += len(chunk)
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if returncode != 0:
        raise DatabaseError(f"{what}: {describe_exit(tool, returncode)}: {summarize(drain.text())}")
    return fed


class ProcessDumpStream(DumpStream):
    """The stdout of a dump tool, with its exit status and output checked by `finish()`.

    `validate(head, tail, size)` raises DatabaseError when the bytes do not look like a complete
    dump; `make_info(size)` builds the metadata once everything checked out. `on_close` releases
    whatever the engine held for the dump (PostgreSQL's snapshot-exporting session). `advise`
    reads the stderr of a tool that failed and returns what the user should do about it (the
    GRANT a refused statement needs), added to the message, or None. `observe` sees every
    piece of the output as it is read (PostgreSQL follows its custom dump's structure with
    it, and `validate` asks whether it was whole).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        what: str,
        env: Mapping[str, str] | None,
        validate: Callable[[bytes, bytes, int], None],
        make_info: Callable[[int], DumpInfo],
        pass_fds: Sequence[int] = (),
        on_close: Callable[[], None] | None = None,
        advise: Callable[[bytes], str | None] | None = None,
        observe: Callable[[memoryview], None] | None = None,
    ) -> None:
        super().__init__()
        self._advise = advise
        self._observe = observe
        self._tool = os.path.basename(argv[0])
        self._what = what
        self._validate = validate
        self._make_info = make_info
        self._on_close = on_close
        self._size = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._eof = False
        self._finished = False
        try:
            self._proc = spawn_tool(
                argv, what=what, stdin=subprocess.DEVNULL, env=env, pass_fds=pass_fds
            )
        except BaseException:
            self._release()
            raise
        self._drain = StderrDrain(self._proc.stderr)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._eof:
            return 0
        assert self._proc.stdout is not None
        n = self._proc.stdout.readinto1(b)  # type: ignore[attr-defined]
        if not n:
            self._eof = True
            return 0
        view = memoryview(b)[:n]
        if self._observe is not None:
            self._observe(view)
        if len(self._head) < _HEAD_KEEP:
            self._head += view[: _HEAD_KEEP - len(self._head)]
        self._tail += view[-_TAIL_KEEP:]
        if len(self._tail) > _TAIL_KEEP:
            del self._tail[: len(self._tail) - _TAIL_KEEP]
        self._size += n
        return n

    def finish(self) -> DumpInfo:
        if self._finished:
            raise DatabaseError(f"{self._what}: finish() called twice")
        if not self._eof and self.read(1):
            # Unread output means the caller stored a truncated dump: never call that success.
            self.close()
            raise DatabaseError(f"{self._what}: finish() called before the dump was read to EOF")
        try:
            returncode = self._proc.wait(timeout=_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.close()
            raise DatabaseError(
                f"{self._what}: {self._tool} did not exit after closing its output"
            ) from None
        err = self._drain.text()
        if returncode != 0:
            self.close()
            advice = self._advise(err) if self._advise is not None else None
            raise DatabaseError(
                f"{self._what}: {describe_exit(self._tool, returncode)}: {summarize(err)}"
                + (f"; {advice}" if advice else "")
            )
        try:
            if self._size == 0:
                raise DatabaseError(f"{self._what}: {self._tool} produced no output")
            self._validate(bytes(self._head), bytes(self._tail), self._size)
            info = self._make_info(self._size)
        finally:
            self.close()
        self._finished = True
        return info

    def _release(self) -> None:
        if self._on_close is not None:
            cb, self._on_close = self._on_close, None
            cb()

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # the backup was aborted: the dump is worthless half-read
            if proc.stdout is not None:
                proc.stdout.close()
            proc.wait()
            self._drain.text()
            if proc.stderr is not None:
                proc.stderr.close()
        self._release()
        super().close()


_SESSION_END = "__casbackup_end__"
_SESSION_CLOSE_WAIT = 10.0  # seconds a client may take to exit after its stdin closed


class ClientSession:
    """A database client (psql, mariadb/mysql) kept open and fed SQL one batch at a time,
    so that what a statement took (a lock, an exported snapshot, an open transaction)
    lasts until `close()`: closing its stdin ends the session, and the server releases
    everything with the connection.

    ``end_sql`` makes the client print ``_SESSION_END`` on a line of its own after a batch
    (``{end}`` in it is replaced): the client flushes per statement, so that line says the
    batch's output is complete. ``tool`` names the client in errors. ``keep_blank``: keep
    empty output lines (psql's ``-A -t`` prints them between statements; they say nothing).
    ``advise`` reads the stderr of a client that failed and returns what the user should do
    about it, added to the message, or None. Raises DatabaseError when the client cannot
    start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        what: str,
        tool: str,
        end_sql: str,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        keep_blank: bool = True,
        advise: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self._what = what
        self._advise = advise
        self._tool = tool
        self._end_sql = end_sql.format(end=_SESSION_END)
        self._keep_blank = keep_blank
        self._closed = False
        self._proc = spawn_tool(argv, what=what, stdin=subprocess.PIPE, env=env, pass_fds=pass_fds)
        self._drain = StderrDrain(self._proc.stderr)  # type: ignore[arg-type]

    def query(self, sql: str) -> list[str]:
        """Run `sql` (one or more statements); its output lines. DatabaseError when the
        client exits (it stops at the first error), with the server's message."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{sql}\n{self._end_sql}\n".encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the client is gone: reading below reports why
        lines: list[str] = []
        while True:
            raw = self._proc.stdout.readline()
            if not raw:
                code = self._proc.wait()
                self.close()
                err = self._drain.text()
                advice = self._advise(err) if self._advise is not None else None
                raise DatabaseError(
                    f"{self._what}: {describe_exit(self._tool, code)}: {summarize(err)}"
                    + (f"; {advice}" if advice else "")
                )
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == _SESSION_END:
                return lines
            if line or self._keep_blank:
                lines.append(line)

    def close(self) -> None:
        """End the session (releasing what it holds); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        except (OSError, ValueError):
            pass  # already broken: the wait below still ends the client
        try:
            self._proc.wait(timeout=_SESSION_CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # the server drops the locks with the connection
            self._proc.wait()
        self._drain.text()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
