"""Checks on a store's database file that only the tests need."""

import sqlite3
from pathlib import Path


def integrity_ok(path: Path) -> bool:
    """True if SQLite's full integrity check finds nothing wrong, read through a connection of its own."""
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
