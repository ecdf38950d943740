"""Create the notes app's database (app/data/notes.sqlite3) with a few hundred rows, if missing.

Deterministic (seeded), so every demo run starts from the same data. `--force` recreates it.
"""

from __future__ import annotations

import random
import sqlite3
import sys
from pathlib import Path

DB_PATH = Path(__file__).resolve().parent / "app" / "data" / "notes.sqlite3"
SCHEMA = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL,
                    created TEXT NOT NULL, pinned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE note_tags (note_id INTEGER NOT NULL REFERENCES notes(id),
                        tag_id INTEGER NOT NULL REFERENCES tags(id),
                        PRIMARY KEY (note_id, tag_id));
CREATE INDEX notes_created ON notes(created);
"""
TAGS = ["work", "home", "ideas", "todo", "reading", "travel", "recipes", "ops"]
WORDS = (
    "backup restore database snapshot server deploy coffee meeting invoice garden "
    "holiday release ticket migration review draft budget chapter recipe station"
).split()


def make(path: Path = DB_PATH, notes: int = 300) -> bool:
    """Create the database; return False when it already exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO tags (id, name) VALUES (?, ?)", enumerate(TAGS, 1))
        for i in range(1, notes + 1):
            title = " ".join(rng.choice(WORDS) for _ in range(3)).capitalize()
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) + "."
            created = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
            conn.execute(
                "INSERT INTO notes (id, title, body, created, pinned) VALUES (?, ?, ?, ?, ?)",
                (i, title, body, created, int(i % 17 == 0)),
            )
            for tag in rng.sample(range(1, len(TAGS) + 1), rng.randint(0, 3)):
                conn.execute("INSERT INTO note_tags VALUES (?, ?)", (i, tag))
        conn.commit()
    finally:
        conn.close()
    return True


if __name__ == "__main__":
    if "--force" in sys.argv[1:]:
        for suffix in ("", "-wal", "-shm"):
            Path(str(DB_PATH) + suffix).unlink(missing_ok=True)
    created = make()
    print(f"{'created' if created else 'kept existing'} {DB_PATH}")
