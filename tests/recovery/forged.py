"""Forged snapshots (written with the key, through the library) and the means to prove that
nothing they store is followed: a TCP listener that counts connections, a password file whose
reads are detected (by access time across processes, by a spy inside this one)."""

from __future__ import annotations

import builtins
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, Snapshot, now_utc
from casbackup.repo.tree import Node, NodeKind

OLD = 1_000_000_000  # a file's atime set before its mtime: the next read moves it (relatime)


class Listener:
    """A TCP port on 127.0.0.1 that accepts, counts and drops every connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


class Secret:
    """A password file; `read()` says whether anything read it since it was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("s3cret-from-a-forged-snapshot\n")
        os.utime(path, (OLD, OLD + 10))
        self.opened: list[str] = []  # opens seen by the in-process spy
        self.atime_works = True  # False on a noatime mount: only the spy can tell then

    def read(self) -> bool:
        moved = self.atime_works and os.stat(self.path).st_atime > OLD + 10
        return moved or bool(self.opened)


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Secret:
    found = Secret(tmp_path / "stolen.pass")
    probe = tmp_path / "atime-probe"
    probe.write_text("x")
    os.utime(probe, (OLD, OLD + 10))
    probe.read_text()
    found.atime_works = os.stat(probe).st_atime > OLD + 10
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(found.path):
            found.opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return found


def _file(repo: Repository, name: str, data: bytes) -> Node:
    content = (repo.save_blob(Kind.DATA, data)[0],) if data else ()
    return Node(name=name.encode(), kind=NodeKind.FILE, mode=0o644, size=len(data),
                content=content, content_hash=blake3.blake3(data).digest(),
                uid=os.getuid(), gid=os.getgid())  # fmt: skip


def _dir(name: str, tree: BlobId) -> Node:
    return Node(name=name.encode(), kind=NodeKind.DIR, mode=0o755, subtree=tree,
                uid=os.getuid(), gid=os.getgid())  # fmt: skip


def sqlite_bytes(path: Path, rows: int) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t (id) VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path.read_bytes()


def forge(
    repo: Repository,
    *,
    databases: list[DatabaseRecord],
    definition: dict[str, Any] | None,
    dumps: dict[str, bytes] | None = None,
    databases_node: Node | None = None,
    paths: tuple[str, ...] = ("/srv/app",),
) -> Snapshot:
    """A snapshot of application `shop`: /srv/app/{conf.ini,data.txt} and `dumps` (file name
    -> bytes) under /.databases (or `databases_node` there instead), with the given records
    and stored definition: what someone holding the key could write."""
    app = repo.save_tree([_file(repo, "conf.ini", b"[x]\n"), _file(repo, "data.txt", b"data\n")])
    srv = repo.save_tree([_dir("app", app)])
    top = [_dir("srv", srv)]
    if databases_node is not None:
        top.insert(0, databases_node)
    elif dumps:
        files = [_file(repo, name, data) for name, data in sorted(dumps.items())]
        top.insert(0, _dir(".databases", repo.save_tree(files)))
    root = repo.save_tree(sorted(top, key=lambda n: n.name))
    time, start_ns = now_utc()
    snap = Snapshot(time=time, start_ns=start_ns, host="forged", user="x", paths=paths,
                    tree=root.hex(), app="shop", databases=tuple(databases),
                    app_definition=definition)  # fmt: skip
    return repo.save_snapshot(snap)


def pg_record(path: str = "/.databases/orders.pgdump", size: int = 5) -> DatabaseRecord:
    return DatabaseRecord(name="orders", engine="postgresql", format="custom",
                          server_version="15", path=path, size=size, row_counts={"public.t": 1})  # fmt: skip


def hostile_definition(listener: Listener, secret: Secret) -> dict[str, Any]:
    """A stored definition that points at the listener and names the password file."""
    return {"name": "shop", "sources": ["/srv/app"], "databases": [{
        "name": "orders", "engine": "postgresql", "host": "127.0.0.1", "port": listener.port,
        "user": "postgres", "database": "orders", "password_file": str(secret.path),
        "options": {"connect_timeout": "2"},
    }]}  # fmt: skip
