"""Notes: a tiny web app (standard library only) whose data lives in SQLite."""

__version__ = "1.4.2"
