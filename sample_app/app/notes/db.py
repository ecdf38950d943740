"""The notes database: one SQLite file, path from config/settings.ini."""

from __future__ import annotations

import configparser
import sqlite3
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent


def settings() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(APP_DIR / "config" / "settings.ini")
    return parser


def connect() -> sqlite3.Connection:
    path = APP_DIR / settings().get("database", "path", fallback="data/notes.sqlite3")
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    return conn


def recent_notes(conn: sqlite3.Connection, limit: int = 20) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT n.id, n.title, n.body, n.created, group_concat(t.name, ', ') AS tags "
        "FROM notes n LEFT JOIN note_tags nt ON nt.note_id = n.id "
        "LEFT JOIN tags t ON t.id = nt.tag_id GROUP BY n.id ORDER BY n.created DESC LIMIT ?",
        (limit,),
    ).fetchall()


def add_note(conn: sqlite3.Connection, title: str, body: str) -> int:
    with conn:
        cur = conn.execute(
            "INSERT INTO notes (title, body, created) VALUES (?, ?, datetime('now'))", (title, body)
        )
    return int(cur.lastrowid or 0)
