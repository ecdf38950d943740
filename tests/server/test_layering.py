"""Layering (STYLE.md): the service never imports the CLI; the worker and the account code
(used by the CLI) never import FastAPI."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).parents[2] / "casbackup" / "server"


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_server_never_imports_the_cli() -> None:
    for path in SERVER.rglob("*.py"):
        assert not any(m.startswith("casbackup.cli") for m in imports(path)), path


def test_worker_accounts_and_state_do_not_need_fastapi() -> None:
    for name in ("worker.py", "accounts.py", "statedb.py", "audit.py"):
        mods = imports(SERVER / name)
        assert not any(m.startswith(("fastapi", "starlette", "uvicorn")) for m in mods), name
