"""A pre-imported ``casbackup`` process that forks a fresh CLI run per test request.

The suite runs the CLI in a real subprocess thousands of times (``fixtures.run_cli``): exit
codes, signals, file descriptors and the interpreter's shutdown behave as they do for users.
Most of each run's CPU was the interpreter start and the imports (~0.2-0.3 s, more than the
command itself on a test-sized repository). The zygote pays them once per test worker: it
imports the CLI and every command module, then waits on a UNIX socket. Per request it forks a
*supervisor*, which forks the *runner* that becomes the command: stdin/stdout/stderr are the
caller's descriptors (passed with SCM_RIGHTS), the environment is exactly the caller's, the
working folder and umask are the caller's, and the runner leaves through the interpreter's
normal shutdown (threads joined, atexit run, buffers flushed), so ``sys.exit(code)`` in the
command is the exit status. The supervisor reports the runner's pid, then its wait status.

Protocol on one connection (client -> zygote, then zygote -> client), all JSON lines:
``{"argv": [...], "env": {...}, "cwd": "...", "umask": N}`` with three fds attached;
``{"pid": N}``; ``{"status": W}`` (a ``waitpid`` status).

Only for tests: the client (``fixtures.run_cli``) falls back to a plain subprocess when the
zygote cannot be used or the call's environment changes what an interpreter start decides
(PYTHON*, LC_*, LANG*).

    python -m casbackup.testing.zygote SOCKET_PATH
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Any

ACCEPT_POLL_S = 1.0  # how often an idle zygote checks that the process that started it lives
# What an interpreter decides at start from its environment: a call that changes one of
# these runs in a plain subprocess instead (fixtures.run_cli).
START_ENV_PREFIXES = ("PYTHON", "LC_", "LANG")


def start_env(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` an interpreter start depends on (``START_ENV_PREFIXES``)."""
    return {k: v for k, v in env.items() if k.startswith(START_ENV_PREFIXES)}


def _preimport() -> None:
    """Import what any command would: the CLI, every command module, the service."""
    import importlib

    from casbackup.cli import main

    for module in sorted(set(main.COMMAND_MODULES.values())):
        importlib.import_module(f"casbackup.cli.{module}")
    for extra in (
        "casbackup.server.app",
        "casbackup.archiver.backup",
        "casbackup.archiver.restore",
    ):
        try:
            importlib.import_module(extra)
        except ImportError:  # an optional part missing here: its commands import it themselves
            pass


def _read_line(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One JSON line from ``conn`` and the fds that came with it."""
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        chunk, got, _flags, _addr = socket.recv_fds(conn, 1 << 20, 8)
        if not chunk:
            raise EOFError("the client went away")
        data += chunk
        fds.extend(got)
    return json.loads(data), fds


def _send(conn: socket.socket, doc: dict[str, Any]) -> None:
    conn.sendall(json.dumps(doc).encode() + b"\n")


def _become_runner(conn: socket.socket, listener: socket.socket, request: dict[str, Any],
                   fds: list[int]) -> list[str]:  # fmt: skip
    """In the runner: take the caller's descriptors, environment, folder and umask."""
    listener.close()
    conn.close()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    return list(request["argv"])


def _supervise(conn: socket.socket, listener: socket.socket) -> list[str] | None:
    """In the supervisor: fork the runner, report its pid and status, then leave with
    ``os._exit``. Returns (in the runner only) the command line to run."""
    try:
        request, fds = _read_line(conn)
        pid = os.fork()
        if pid == 0:
            return _become_runner(conn, listener, request, fds)
        for fd in fds:
            os.close(fd)
        _send(conn, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(conn, {"status": status})
    except BaseException:  # noqa: BLE001 - the client sees the connection close and fails
        pass
    os._exit(0)


def serve(path: str) -> list[str]:
    """Listen on ``path`` until the parent process goes away; returns only in a runner,
    with the command line it is to run."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(ACCEPT_POLL_S)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        while True:  # reap finished supervisors
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if os.getppid() != parent:
            os._exit(0)
        if conn is None:
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            argv = _supervise(conn, listener)
            if argv is not None:
                return argv
        conn.close()


def run_runner(main: Any) -> int:
    """Run ``main()`` as the interpreter would run a program, and return its exit status:
    ``SystemExit`` as Python maps it, non-daemon threads joined, atexit functions (weakref
    finalizers, multiprocessing's clean-up, logging's flush) run, stdio flushed. Module
    teardown is skipped: in a process holding every command's modules it took ~0.18 s,
    most of a small command's run."""
    import atexit
    import threading
    import traceback

    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # as the interpreter does when flushing stdout fails
    return code & 0xFF


# ---------------------------------------------------------------------------- the client
_zygote: dict[str, Any] = {}  # this process's zygote: pid (of the owner), proc, path, env


def _zygote_path() -> str | None:
    """The socket of this process's zygote, started on first use; None where it cannot
    run (no fork or SCM_RIGHTS, CASBACKUP_TEST_ZYGOTE=0, or it failed to start)."""
    import atexit
    import subprocess
    import tempfile

    if _zygote.get("owner") == os.getpid():
        return _zygote.get("path")
    _zygote.clear()
    _zygote["owner"] = os.getpid()
    if os.environ.get("CASBACKUP_TEST_ZYGOTE") == "0" or not hasattr(socket, "send_fds"):
        return None
    folder = tempfile.mkdtemp(prefix="casbackup-zygote-")
    path = os.path.join(folder, "sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.testing.zygote", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        proc.kill()
        proc.wait()
        return None

    def stop() -> None:
        proc.terminate()
        proc.wait(10)
        with_suppressed_oserror(os.unlink, path)
        with_suppressed_oserror(os.rmdir, folder)

    atexit.register(stop)
    _zygote.update(path=path, proc=proc, env=start_env(dict(os.environ)))
    return path


def with_suppressed_oserror(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def run_forked(argv: list[str], env: dict[str, str], input: bytes | None,
               timeout: float) -> tuple[int, bytes, bytes] | None:  # fmt: skip
    """Run ``casbackup ARGV`` in a runner forked from this process's zygote: (exit status as
    ``subprocess`` gives it, stdout, stderr), or None when the zygote cannot take this call
    (the caller runs a plain subprocess). Raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds, the runner killed, as ``subprocess.run`` does."""
    import subprocess

    from casbackup.threadsig import quiet_thread

    path = _zygote_path()
    if path is None or start_env(env) != _zygote["env"]:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    in_r, in_w = os.pipe() if input is not None else (os.dup(0), -1)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    umask = os.umask(0o22)
    os.umask(umask)
    request = {"argv": argv, "env": env, "cwd": os.getcwd(), "umask": umask}
    try:
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [in_r, out_w, err_w])
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        with os.fdopen(fd, "rb", closefd=True) as f:
            while data := f.read1(1 << 16):
                chunks[fd].append(data)

    def feed() -> None:
        with os.fdopen(in_w, "wb", closefd=True) as f:
            try:
                f.write(input or b"")
            except BrokenPipeError:
                pass

    threads = [quiet_thread(drain, (fd,)) for fd in (out_r, err_r)]
    if input is not None:
        threads.append(quiet_thread(feed))
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    reader = conn.makefile("rb")
    pid = status = None
    try:
        conn.settimeout(timeout)
        pid = json.loads(reader.readline())["pid"]
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        line = reader.readline()
        if not line:
            raise RuntimeError("the zygote's supervisor went away")
        status = json.loads(line)["status"]
    except TimeoutError:
        if pid is not None:
            with_suppressed_oserror(os.kill, pid, signal.SIGKILL)
    finally:
        reader.close()
        conn.close()
    for t in threads:
        t.join(max(0.01, deadline - time.monotonic()) if status is not None else 5)
    out, err = b"".join(chunks[out_r]), b"".join(chunks[err_r])
    if status is None:
        raise subprocess.TimeoutExpired(["casbackup", *argv], timeout, out, err)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, out, err


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the caller stops an idle zygote
    _preimport()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it
    command_line = serve(sys.argv[1])
    sys.argv = ["casbackup", *command_line]
    from casbackup.cli.main import main

    os._exit(run_runner(main))
