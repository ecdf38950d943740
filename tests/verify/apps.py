"""A small application (files, a config file, a symlink, databases) backed up through the library."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from casbackup.archiver.backup import BackupOptions, StreamSpec, run_backup
from casbackup.engines.base import DatabaseSpec, DumpStream, get_engine
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import flip_stored_byte

EXTENSIONS = {"sqlite": "sqlite", "postgresql": "pgdump", "mysql": "sql"}


def make_app(root: Path, rows: int = 200) -> tuple[Path, DatabaseSpec]:
    """The application's folder and its SQLite database (kept outside the folder)."""
    app = root / "app"
    (app / "conf").mkdir(parents=True)
    (app / "data" / "empty").mkdir(parents=True)
    (app / "conf" / "settings.ini").write_text("[db]\nname = shop\n")
    (app / "data" / "blob.bin").write_bytes(os.urandom(150_000))
    (app / "data" / "small.txt").write_text("hello\n")
    (app / "data" / "zero.bin").write_bytes(b"")
    os.symlink("conf/settings.ini", app / "settings-link")
    db = root / "shop.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
    conn.executemany("INSERT INTO orders (item) VALUES (?)", [(f"item {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return app, DatabaseSpec(name="local", engine="sqlite", path=str(db))


def definition(
    name: str, app: Path, specs: list[DatabaseSpec], required: list[str]
) -> dict[str, Any]:
    dbs = []
    for s in specs:
        entry: dict[str, Any] = {"name": s.name, "engine": s.engine}
        for key in ("path", "host", "port", "user", "database", "password_env", "password_file"):
            if getattr(s, key) is not None:
                entry[key] = getattr(s, key)
        dbs.append(entry)
    return {
        "name": name, "description": "test app", "sources": [str(app)], "excludes": [],
        "databases": dbs, "verification": {"required_files": required},
    }  # fmt: skip


def _opener(spec: DatabaseSpec) -> Any:
    def open_dump() -> DumpStream:
        return get_engine(spec.engine).dump(spec)

    return open_dump


def backup(
    repo: Repository,
    app: Path,
    specs: list[DatabaseSpec],
    *,
    name: str = "shop",
    required: tuple[str, ...] = ("conf/settings.ini",),
) -> Snapshot:
    streams = tuple(
        StreamSpec(s.name, f"{s.name}.{EXTENSIONS[s.engine]}", s.engine, open=_opener(s))
        for s in specs
    )
    options = BackupOptions(paths=(str(app),), type="full", app=name, streams=streams,
                            app_definition=definition(name, app, specs, list(required)))  # fmt: skip
    result = run_backup(repo, options)
    assert result.snapshot is not None
    return result.snapshot


def corrupt_file(repo: Repository, repo_path: str, snap: Snapshot, path: str) -> None:
    """Flip one byte inside the stored (encrypted) first chunk of a file of `snap`."""
    node = repo.find_node(snap.root, path)
    assert node is not None and node.content
    loc = repo.locate(node.content[0])
    assert loc.kind == Kind.DATA
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x40)
