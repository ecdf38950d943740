"""Every thread casbackup starts keeps the stop signals away from itself (casbackup/threadsig.py).

A thread that does not block SIGINT/SIGTERM/SIGHUP can take a process-directed stop signal
while the main thread waits, and the stop then hangs until that wait ends by itself
(tests/cli/test_signals_threads.py shows it with /proc masks at run time). This test guards the
start sites statically, so that a new plain ``threading.Thread`` or executor cannot slip in:
- ``threading.Thread(...)`` only in threadsig.py (``quiet_thread``) and the service's modules
  that start programs on purpose (their children must not inherit a blocked mask);
- every ``ThreadPoolExecutor(...)`` passes ``initializer=block_stop_signals``;
- every ``multiprocessing`` ``Pool(...)`` is created inside ``with stop_signals_blocked():``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import casbackup

ROOT = Path(casbackup.__file__).parent

# Threads that run `casbackup` children or notifier commands: an exec'd program keeps the
# mask, so these must not block the stop signals (threadsig.py's docstring says why).
PLAIN_THREADS_ALLOWED = {
    "threadsig.py",
    "server/jobs.py",
    "server/scheduler.py",
    "server/notices.py",
}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                found.append(node)
    return found


def _modules() -> list[tuple[str, ast.AST]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path)))
        for path in sorted(ROOT.rglob("*.py"))
    ]


def _inside_blocked_with(tree: ast.AST, call: ast.Call) -> bool:
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        guarded = any(
            isinstance(item.context_expr, ast.Call)
            and "stop_signals_blocked" in ast.unparse(item.context_expr.func)
            for item in node.items
        )
        if guarded and any(inner is call for stmt in node.body for inner in ast.walk(stmt)):
            return True
    return False


def test_plain_threads_only_where_children_must_keep_the_signals():
    offenders = [
        f"{name}:{call.lineno}"
        for name, tree in _modules()
        if name not in PLAIN_THREADS_ALLOWED
        for call in _calls(tree, "Thread")
    ]
    assert offenders == [], f"use threadsig.quiet_thread instead of threading.Thread: {offenders}"


def test_every_thread_pool_blocks_the_stop_signals():
    offenders = []
    for name, tree in _modules():
        for call in _calls(tree, "ThreadPoolExecutor"):
            init = {kw.arg: ast.unparse(kw.value) for kw in call.keywords}.get("initializer")
            if init is None or "block_stop_signals" not in init:
                offenders.append(f"{name}:{call.lineno}")
    assert offenders == [], (
        f"ThreadPoolExecutor without initializer=block_stop_signals: {offenders}"
    )


def test_every_process_pool_starts_its_threads_with_the_signals_blocked():
    offenders = [
        f"{name}:{call.lineno}"
        for name, tree in _modules()
        for call in _calls(tree, "Pool")
        if not _inside_blocked_with(tree, call)
    ]
    assert offenders == [], f"Pool(...) outside `with stop_signals_blocked():`: {offenders}"


def test_the_guard_sees_what_it_guards():
    """The checks above would pass vacuously if the walk found no start sites at all."""
    names = dict(_modules())
    assert _calls(names["threadsig.py"], "Thread")
    assert _calls(names["verify/check.py"], "Pool")
    assert _calls(names["archiver/restore_files.py"], "ThreadPoolExecutor")
    bad = ast.parse("import threading\nthreading.Thread(target=print).start()\n")
    assert _calls(bad, "Thread")
    unguarded = ast.parse("pool = ctx.Pool(2)\n")
    assert not _inside_blocked_with(unguarded, _calls(unguarded, "Pool")[0])
